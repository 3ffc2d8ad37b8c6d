"""The built-in datasets that configs and the default job name, read from the files installed
packages ship: what each promises of its rows and splits."""
from collections import Counter

import pytest

from lmtune.data.builtin import rotten_tomatoes, rotten_tomatoes_pairs
from lmtune.data.highlights import aclsum_highlights
from lmtune.data.instructions import ASPECTS


@pytest.fixture(scope="module")
def reviews():
    return rotten_tomatoes(0)


def test_rotten_tomatoes_keeps_each_film_in_one_split_and_drops_plots_and_repeats(reviews):
    films = {name: {r["movie"] for r in t.rows} for name, t in reviews.items()}
    assert not films["train"] & films["validation"] and not films["train"] & films["test"]
    assert not films["validation"] & films["test"]
    sizes = {name: len(t.rows) for name, t in reviews.items()}
    total = sum(sizes.values())
    assert abs(sizes["train"] / total - 0.8) < 0.02 and abs(sizes["test"] / total - 0.1) < 0.02
    texts = [r["text"] for t in reviews.values() for r in t.rows]
    assert len(texts) == len(set(texts))  # no snippet twice, in a split or across them
    share = lambda rows: sum(r["label"] == "fresh" for r in rows) / len(rows)  # noqa: E731
    whole = share([r for t in reviews.values() for r in t.rows])
    for t in reviews.values():  # films dealt by their majority label: each split about as
        assert {r["label"] for r in t.rows} == {"fresh", "rotten"}  # fresh as the whole
        assert abs(share(t.rows) - whole) < 0.05
        assert len(t.lines) == len(t.rows)


def test_a_review_pair_has_one_film_the_asked_sentiment_chosen_and_no_repeats(reviews):
    pairs = rotten_tomatoes_pairs(0)
    for name, table in pairs.items():
        film_of = {r["text"]: r["movie"] for r in reviews[name].rows}
        label_of = {r["text"]: r["label"] for r in reviews[name].rows}
        asked = Counter()
        for row in table.rows:
            want = "positive" if " positive review " in row["prompt"] else "negative"
            asked[want] += 1
            chosen, rejected = row["chosen"], row["rejected"]
            assert film_of[chosen] == film_of[rejected]  # both from this split's reviews
            title = film_of[chosen].replace("_", " ").title()
            assert row["prompt"].endswith(f"of the film {title}.")
            assert label_of[chosen] == ("fresh" if want == "positive" else "rotten")
            assert label_of[rejected] != label_of[chosen]
        used = [r[k] for r in table.rows for k in ("chosen", "rejected")]
        assert len(used) == len(set(used))
        assert abs(asked["positive"] - asked["negative"]) <= 1
    assert len(pairs["train"].rows) > 2000


def test_highlight_sentences_carry_only_known_aspects_and_each_aspect_occurs():
    splits = aclsum_highlights(0)
    assert set(splits) == {"train", "validation", "test"}
    for table in splits.values():
        seen = Counter(a for r in table.rows for a in r["label"])
        assert set(seen) == set(ASPECTS)
        assert all(r["label"] == sorted(set(r["label"]), key=ASPECTS.index)
                   for r in table.rows)  # in the aspects' order, each once
        unmarked = sum(not r["label"] for r in table.rows)
        assert 0.5 < unmarked / len(table.rows) < 0.98  # most sentences are no highlight
