"""Large CSV files go through Arrow's parser: the same rows, columns and line numbers as
the line-by-line reader, and every file it cannot number exactly goes back to that reader,
errors included."""
import codecs

import pytest

from lmtune.data import readers
from lmtune.data.arrow_csv import read_csv_arrow
from lmtune.data.readers import read_csv, read_path
from lmtune.errors import LmtuneError

VALID = {
    "plain": "text,label\na good film,fresh\na bad one,rotten\n",
    "quoted": 'text,label\n"a, comma",1\n"say ""hi""",0\n',
    "crlf": "text,label\r\nfirst,a\r\nsecond,b\r\n",
    "no final newline": "text,label\nx,1\ny,2",
    "pandas index": ",text,label\n0,x,a\n1,y,b\n",
    "numbers stay text": "text,label\n12,1.0\n3.5,2\n",
    "empty cells": "text,label,note\nx,a,\ny,b,z\n",
    "unicode": "text,label\nnaïve café 東京,a\n😀,b\n",
    "semicolons": "text;label\nx;a\ny;b\n",
    "a field spanning lines": 'text,label\n"two\nlines",a\n"and\r\nthree\nhere",b\nx,c\n',
}


@pytest.mark.parametrize("name", VALID)
def test_the_same_table_as_the_line_by_line_reader(tmp_path, name):
    path = tmp_path / "d.csv"
    path.write_bytes(VALID[name].encode())
    fast, slow = read_csv_arrow(path, None), read_csv(VALID[name], str(path))
    assert fast is not None
    assert fast.columns == slow.columns
    assert list(fast.rows) == slow.rows
    assert [fast.loc(i) for i in range(len(slow.rows))] == \
        [slow.loc(i) for i in range(len(slow.rows))]
    assert fast.column("text") == [r["text"] for r in slow.rows]


def test_a_bom_and_tabs(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_bytes(codecs.BOM_UTF8 + b"text\tlabel\na, b\tx\n")
    table = read_csv_arrow(path, "\t")
    assert table.columns == ["text", "label"] and list(table.rows) == [{"text": "a, b",
                                                                         "label": "x"}]


@pytest.mark.parametrize("text", [
    "text,label\nx,a\n\ny,b\n",  # a blank line
    "text,label\nx,a\ny,b,c\n",  # a wrong number of fields
    "text,label\n",  # no rows
    "text,label\nx,a\n\r,b\n",  # a lone carriage return
    'text,label\n"a"b,x\ny,z\n',  # text after a closing quote: the csv module refuses it
    'text,label\nx,a\ny,"\n',  # an unclosed quote
])
def test_what_it_cannot_number_goes_back(tmp_path, text):
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode())
    assert read_csv_arrow(path, None) is None


def test_bad_bytes_go_back(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\nx,a\n\xff\xfe,b\n")
    assert read_csv_arrow(path, None) is None


@pytest.mark.parametrize("text, error", [
    ("text,label\nx,a\ny,b,c\n", r"d.csv:3: expected 2 fields as in the header, found 3"),
    ("text,label\nx,a\n\xff,b\n", r"d.csv:3: not valid UTF-8"),
    ("text,text\nx,a\n", r"d.csv:1: header names column 'text' twice"),
])
def test_errors_name_the_line_as_before(tmp_path, monkeypatch, text, error):
    monkeypatch.setattr(readers, "ARROW_MIN_BYTES", 0)  # every file tries Arrow first
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(LmtuneError, match=error):
        read_path(path)


def test_large_files_take_the_arrow_path(tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{i % 3}\n" for i in range(1000)))
    monkeypatch.setattr(readers, "ARROW_MIN_BYTES", 0)
    table = read_path(path)
    assert isinstance(table.rows, readers.ColumnRows)
    assert table.loc(999) == f"{path}:1001" and table.rows[999] == {"text": "row 999",
                                                                     "label": "0"}


def test_whatever_a_csv_writer_writes_reads_alike(tmp_path):
    """Cells with delimiters, quotes, newlines and non-ASCII, quoted as the csv module
    quotes them, LF or CRLF: all take the Arrow path, with the line reader's rows and
    lines."""
    import csv
    import io
    import random

    rng = random.Random(0)
    path = tmp_path / "d.csv"
    for _ in range(300):
        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator=rng.choice(["\n", "\r\n"]))
        w.writerow(["text", "label"])
        for _ in range(rng.randint(1, 6)):
            w.writerow(["".join(rng.choice('ab ,;"\n\té') for _ in range(rng.randint(1, 6))),
                        rng.choice(["x", "y,z", 'q"'])])
        text = buf.getvalue()
        path.write_text(text, newline="")
        fast, slow = read_csv_arrow(path, ","), read_csv(text, str(path), ",")
        assert fast is not None, text
        assert list(fast.rows) == slow.rows, text
        assert list(fast.lines) == slow.lines, text
