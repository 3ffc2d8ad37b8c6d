"""Built-in multi-label data: `aclsum_highlights`, the sentences of 250 ACL papers, each
labelled with the aspects of its paper's summary it states (challenge, approach, outcome;
any number, most none), as the aclsum annotators highlighted them.

    {"text": "We propose a statistical method ...", "label": ["approach"]}

The papers' own train/val/test files give the splits (100/50/100 papers; 3,868 / 1,978 /
3,766 sentences), so no paper is in two splits.
"""
from __future__ import annotations

from lmtune.data.instructions import ASPECTS, aclsum_papers, detokenize
from lmtune.data.readers import Table


def aclsum_highlights(seed: int, cache_dir: str = "") -> dict[str, Table]:
    out = {}
    for name, papers in aclsum_papers():
        rows, lines = [], []
        for n, paper in papers:
            for section, sentences in paper["sentences"].items():
                marks = {a: paper["highlights"][a].get(section) or [0] * len(sentences)
                         for a in ASPECTS}
                for i, sentence in enumerate(sentences):
                    rows.append({"text": detokenize(sentence),
                                 "label": [a for a in ASPECTS if marks[a][i]]})
                    lines.append(n)
        out[name] = Table(f"aclsum_highlights[{name}]", ["text", "label"], rows, lines)
    return out
