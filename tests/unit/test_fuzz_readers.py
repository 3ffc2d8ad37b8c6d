"""Fuzzed input: every reader returns a Table or raises LmtuneError, never anything else."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmtune.config import DataConfig
from lmtune.data.load import labeled
from lmtune.data.readers import Table, read_path
from lmtune.errors import LmtuneError

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
cells = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


def check(path):
    try:
        out = read_path(path)
    except LmtuneError as e:
        assert str(e)
        return
    for table in (out.values() if isinstance(out, dict) else [out]):
        assert isinstance(table, Table) and table.rows
        try:
            labeled(table, DataConfig())
        except LmtuneError:
            pass


@FAST
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".tsv", ".jsonl",
                                                              ".json", ".parquet"]))
def test_random_bytes(tmp_path_factory, data, suffix):
    p = tmp_path_factory.mktemp("fuzz") / f"f{suffix}"
    p.write_bytes(data)
    check(p)


@FAST
@given(rows=st.lists(st.lists(cells, max_size=4), max_size=6),
       delim=st.sampled_from([",", ";", "\t", "|"]), quote=st.booleans())
def test_random_csv_structures(tmp_path_factory, rows, delim, quote):
    def fmt(c):
        return '"' + c.replace('"', '""') + '"' if quote else c
    text = "\n".join(delim.join(fmt(c) for c in r) for r in rows)
    p = tmp_path_factory.mktemp("fuzz") / "f.csv"
    p.write_text(text, encoding="utf-8")
    check(p)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | cells,
                           lambda kids: st.lists(kids, max_size=3) |
                           st.dictionaries(cells, kids, max_size=3), max_leaves=8)


@FAST
@given(items=st.lists(json_values, max_size=6), cut=st.integers(0, 40))
def test_random_jsonl_structures(tmp_path_factory, items, cut):
    text = "\n".join(json.dumps(x) for x in items)
    p = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    p.write_text(text[:len(text) - cut] if cut < len(text) else text, encoding="utf-8")
    check(p)


@FAST
@given(rows=st.lists(st.lists(st.tuples(cells, st.booleans()), min_size=2, max_size=2),
                     min_size=2, max_size=6),
       delim=st.sampled_from([",", ";", "\t"]), crlf=st.booleans())
def test_arrow_reads_what_the_line_reader_reads(tmp_path_factory, rows, delim, crlf):
    """Where Arrow's parser takes a file, its rows and line numbers are the line-by-line
    reader's; where they would differ, it must hand the file back (None). Cells are quoted
    or not at random, and may hold quotes, delimiters and newlines."""
    from lmtune.data.arrow_csv import read_csv_arrow
    from lmtune.data.readers import read_csv

    def fmt(cell):
        c, quote = cell
        return '"' + c.replace('"', '""') + '"' if quote else c
    end = "\r\n" if crlf else "\n"
    text = end.join(delim.join(fmt(c) for c in r) for r in rows) + end
    p = tmp_path_factory.mktemp("fuzz") / "f.csv"
    p.write_text(text, encoding="utf-8")
    try:
        fast = read_csv_arrow(p, delim)
    except LmtuneError:  # a header both readers refuse alike
        fast = None
    if fast is None:
        return
    slow = read_csv(text, str(p), delim)
    assert list(fast.rows) == slow.rows
    assert [fast.loc(i) for i in range(len(slow.rows))] == \
        [slow.loc(i) for i in range(len(slow.rows))]
