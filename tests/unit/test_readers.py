"""Every bad-input case is a clean LmtuneError naming the file (and line where there is one)."""
import json
import os

import pytest

from lmtune.config import DataConfig
from lmtune.data.load import labeled, load_splits
from lmtune.data.readers import read_path
from lmtune.errors import LmtuneError
from tests.conftest import sentiment_rows, write_csv


def write(tmp_path, name, content, mode="w"):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def splits_of(path, **data):
    return load_splits(DataConfig(train=str(path), **data), seed=0)


@pytest.mark.parametrize("name, content, fragment", [
    ("empty.csv", "", "file is empty"),
    ("blank.jsonl", "\n\n  \n", "file is empty"),
    ("header.csv", "text,label\n", "has a header but no data rows"),
    ("ragged.csv", "text,label\ngood film,pos\nbad,neg,extra\n",
     "ragged.csv:3: expected 2 fields as in the header, found 3"),
    ("unclosed.csv", 'text,label\ngood,pos\n"never closed,neg\nmore,pos\n',
     "unclosed.csv:3: malformed CSV row"),
    ("badutf8.csv", b"text,label\ngood,pos\nbad \xff\xfe film,neg\n",
     "badutf8.csv:3: not valid UTF-8"),
    ("list.jsonl", '{"text": "a", "label": "x"}\n[1, 2]\n',
     "list.jsonl:2: expected a JSON object, got list"),
    ("cut.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "lab',
     "cut.jsonl:2: not valid JSON"),
    ("dup.csv", "text,text\na,b\n", "names column 'text' twice"),
    ("data.xlsx", "whatever", "unsupported file type '.xlsx'"),
])
def test_unreadable_files(tmp_path, name, content, fragment):
    p = write(tmp_path, name, content)
    with pytest.raises(LmtuneError) as e:
        read_path(p)
    assert fragment in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_cut_off_jsonl_says_so(tmp_path):
    p = write(tmp_path, "cut.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "lab')
    with pytest.raises(LmtuneError, match="cut off"):
        read_path(p)


def test_directory_and_dangling_link(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(LmtuneError, match="is a directory, not a data file"):
        read_path(tmp_path / "folder")
    os.symlink(tmp_path / "gone.csv", tmp_path / "link.csv")
    with pytest.raises(LmtuneError, match="dangling symlink"):
        read_path(tmp_path / "link.csv")
    with pytest.raises(LmtuneError, match="file not found"):
        read_path(tmp_path / "nope.csv")


@pytest.mark.parametrize("name, content", [
    ("bom.csv", "\ufefftext,label\ngood,pos\nbad,neg\n"),
    ("semi.csv", "text;label\ngood, really;pos\nbad;neg\n"),
    ("tabs.csv", "text\tlabel\ngood, really\tpos\nbad\tneg\n"),
    ("tabs.tsv", "text\tlabel\ngood, really\tpos\nbad\tneg\n"),
    ("quoted.csv", 'text,label\n"good, really",pos\n"bad ""film""\nindeed",neg\n'),
])
def test_bom_and_delimiters_are_read(tmp_path, name, content):
    t = read_path(write(tmp_path, name, content))
    assert t.columns == ["text", "label"]
    assert [r["label"] for r in t.rows] == ["pos", "neg"]
    assert t.rows[0]["text"] in ("good", "good, really")


def test_multiline_field_keeps_the_line_of_its_row(tmp_path):
    p = write(tmp_path, "m.csv", 'text,label\n"two\nlines",pos\n,neg\n')
    with pytest.raises(LmtuneError, match=r"m\.csv:4: empty text"):
        splits_of(p)


@pytest.mark.parametrize("content, fragment", [
    ("review,label\ngood,pos\nbad,neg\n",
     "no column 'text' (data.text_column); columns found: review, label"),
    ("text,label\ngood,pos\n   ,neg\n", "e.csv:3: empty text in column 'text'"),
    ("text,label\ngood,pos\nbad,\n", "e.csv:3: missing label in column 'label'"),
    ("text,label\ngood,pos\nfine,pos\n", "every row has label 'pos'"),
])
def test_validation_errors(tmp_path, content, fragment):
    p = write(tmp_path, "e.csv", content)
    with pytest.raises(LmtuneError) as e:
        splits_of(p)
    assert fragment in str(e.value)


def test_missing_column_suggests_the_close_one(tmp_path):
    p = write(tmp_path, "e.csv", "texts,label\ngood,pos\nbad,neg\n")
    with pytest.raises(LmtuneError, match="Did you mean 'texts'"):
        splits_of(p)


def test_jsonl_label_types_and_missing_text(tmp_path):
    p = write(tmp_path, "d.jsonl", '{"text": "good", "label": 1}\n{"text": 3, "label": 0}\n')
    with pytest.raises(LmtuneError, match=r"d\.jsonl:2: text in column 'text' is not a string"):
        splits_of(p)
    p = write(tmp_path, "d.jsonl", '{"text": "good", "label": 1}\n{"label": 0}\n')
    with pytest.raises(LmtuneError, match=r"d\.jsonl:2: text in column 'text' is missing"):
        splits_of(p)


def test_parquet_and_hf_dataset_dir(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sentiment_rows(40)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    t = read_path(tmp_path / "d.parquet")
    assert t.rows == rows and t.loc(2) == f"{tmp_path / 'd.parquet'} (row 3)"

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:30]),
                               "test": datasets.Dataset.from_list(rows[30:])})
    dd.save_to_disk(tmp_path / "hf")
    s = splits_of(tmp_path / "hf")
    assert len(s.test) == 10 and len(s.train) + len(s.validation) == 30  # validation carved


def test_broken_parquet(tmp_path):
    p = write(tmp_path, "b.parquet", b"PAR1 not really")
    with pytest.raises(LmtuneError, match="not a readable Parquet file"):
        read_path(p)


def test_unknown_label_in_test_file_is_named(tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(40))
    test = write(tmp_path, "test.csv", "text,label\ngood,pos\nmeh,neutral\n")
    with pytest.raises(LmtuneError, match=r"test\.csv:3: label 'neutral'.*labels: neg, pos"):
        splits_of(train, test=str(test))


def test_labeled_reads_rows_with_column_mapping(tmp_path):
    p = write(tmp_path, "d.jsonl", "\n".join(json.dumps({"review": f"t{i}", "stars": i % 3})
                                            for i in range(9)))
    part = labeled(read_path(p), DataConfig(text_column="review", label_column="stars"))
    assert part.texts[:3] == ["t0", "t1", "t2"] and part.labels[:3] == ["0", "1", "2"]


def test_a_pandas_index_column_is_read_as_pandas_names_it(tmp_path):
    """`DataFrame.to_csv(path, sep="\\t")` writes the index under an empty header cell."""
    p = write(tmp_path, "data.tsv", "\ttext\tlabel\n0\tgood film\tpos\n1\tdull\tneg\n"
              "2\tfine\tpos\n3\tbad\tneg\n")
    table = read_path(p)
    assert table.columns == ["Unnamed: 0", "text", "label"]
    assert table.rows[1] == {"Unnamed: 0": "1", "text": "dull", "label": "neg"}
    got = labeled(table, DataConfig(train=str(p)))
    assert got.texts[:2] == ["good film", "dull"] and got.labels[:2] == ["pos", "neg"]


def test_a_field_longer_than_pythons_csv_limit_is_read(tmp_path):
    import csv

    doc = "word " * 400_000  # 2 MB in one quoted cell
    p = write(tmp_path, "long.csv", f'text,label\n"{doc}",pos\nshort,neg\n')
    before = csv.field_size_limit()
    table = read_path(p)
    assert table.rows[0]["text"] == doc and table.rows[1]["text"] == "short"
    assert csv.field_size_limit() == before  # the process-wide setting is put back
    bad = write(tmp_path, "bad.csv", f'text,label\nok,pos\n"{doc},neg\nmore,pos\n')
    with pytest.raises(LmtuneError, match=r"bad.csv:3: malformed CSV row.*unclosed quote"):
        read_path(bad)


def test_validation_split_off_a_large_set_is_capped(tmp_path):
    """10% of 5,000 rows would be 500: val_max_rows=100 keeps 100 (the rest stay in train);
    the test split keeps its 10%."""
    p = write_csv(tmp_path / "big.csv", sentiment_rows(5000))
    capped = splits_of(p, val_max_rows=100)
    assert len(capped.validation.texts) == 100 and len(capped.test.texts) == 500
    assert len(capped.train.texts) == 4400
    assert len(splits_of(p, val_max_rows=0).validation.texts) == 500
