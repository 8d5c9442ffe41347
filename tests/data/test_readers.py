"""edgekd.data.readers: the one text-file reader; every bad file gives an error naming file and row."""
import codecs
import json
import os

import pytest

from edgekd.data import load_dataset
from edgekd.data.readers import read_rows, read_texts
from edgekd.errors import EdgekdValueError
from edgekd.runtime.bench import load_texts


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_formats_agree(tmp_path):
    rows = [("good news", 2), ('a "quoted"\nnewline', 0), ("ça va", 1)]
    csvp = tmp_path / "d.csv"
    csvp.write_text('text,label\n"good news",2\n"a ""quoted""\nnewline",0\nça va,1\n', encoding="utf-8")
    tsv = _write(tmp_path / "d.tsv", "text\tlabel\ngood news\t2\n\"a \"\"quoted\"\"\nnewline\"\t0\nça va\t1\n".encode())
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows) + "\n\n", encoding="utf-8")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pqp = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}), pqp)
    want = ([t for t, _ in rows], [y for _, y in rows])
    for p in (csvp, tsv, jl, pqp):
        assert read_texts(p) == want, p
        assert load_dataset(p).texts == want[0]
    assert read_texts(csvp, limit=2) == (want[0][:2], want[1][:2])
    txt = _write(tmp_path / "d.txt", b"one\n\ntwo\r\n")
    assert read_texts(txt) == (["one", "two"], None)


def test_unlabelled_files_give_no_labels(tmp_path):
    p = _write(tmp_path / "u.csv", b"text,label\nx,\ny,\n")
    assert read_texts(p) == (["x", "y"], None)
    assert read_texts(_write(tmp_path / "t.csv", b"text\nx\n")) == (["x"], None)
    assert read_texts(_write(tmp_path / "t.jsonl", b'{"text": "x"}\n')) == (["x"], None)
    with pytest.raises(EdgekdValueError, match=r"u2.csv: no label at row 2 \(line 3\) while other rows have one"):
        read_texts(_write(tmp_path / "u2.csv", b"text,label\nx,1\ny,\n"))


def test_utf8_bom_is_stripped(tmp_path):
    p = _write(tmp_path / "bom.csv", codecs.BOM_UTF8 + b"text,label\nhello,1\n")
    assert read_texts(p) == (["hello"], [1])
    j = _write(tmp_path / "bom.jsonl", codecs.BOM_UTF8 + b'{"text": "hello", "label": 0}\n')
    assert read_texts(j) == (["hello"], [0])
    assert load_dataset(j).texts == ["hello"]


@pytest.mark.parametrize("name,data,match", [
    ("latin1.csv", "text,label\nok,1\ncaf\u00e9 cr\u00e8me,0\n".encode("latin-1"),
     r"latin1.csv: line 3 is not UTF-8 \(byte 0xe9 .*Latin-1"),
    ("utf16.csv", "text,label\nhello,1\n".encode("utf-16"), r"utf16.csv: is UTF-16 text"),
    ("utf16.jsonl", '{"text": "x", "label": 1}\n'.encode("utf-16-le"), r"utf16.jsonl: line 1 holds NUL bytes"),
    ("blob.csv", bytes(range(256)) * 4, r"blob.csv: line 1 holds NUL bytes: a binary"),
    ("late.jsonl", b'{"text": "a", "label": 0}\n' * 500 + b'{"text": "\xff", "label": 0}\n',
     r"late.jsonl: line 501 is not UTF-8 \(byte 0xff"),
])
def test_not_utf8_names_file_and_line(tmp_path, name, data, match):
    p = _write(tmp_path / name, data)
    for read in (read_texts, lambda q: list(read_rows(q)), load_dataset, load_texts):
        with pytest.raises(EdgekdValueError, match=match):
            read(p)


@pytest.mark.parametrize("name,data,match", [
    # a bad JSONL line
    ("bad.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": \n', r"bad.jsonl: line 2 is not valid JSON"),
    ("list.jsonl", b'{"text": "a", "label": 0}\n[1, 2]\n', r"list.jsonl: line 2 is not a JSON object"),
    ("nolabel.jsonl", b'{"text": "a", "label": 0}\n{"text": "b"}\n',
     r"nolabel.jsonl line 2: missing column\(s\) \['label'\]"),
    # a missing text column
    ("cols.csv", b"sentence,label\nhi,1\n",
     r"cols.csv: missing column\(s\) \['text'\]; the file has columns \['sentence', 'label'\]"),
    ("cols.jsonl", b'{"sentence": "hi"}\n', r"cols.jsonl line 1: missing column\(s\) \['text'\]"),
    # labels that are not class ids
    ("words.csv", b"text,label\nfine,0\nnot fine,positive\n",
     r"words.csv: the label 'positive' at row 2 \(line 3\) is not a class id"),
    ("frac.csv", b"text,label\nfine,0\nnot fine,1.5\n", r"frac.csv: the label '1.5' at row 2 \(line 3\) is not"),
    ("neg.csv", b"text,label\nfine,0\nnot fine,-1\n", r"neg.csv: the label '-1' at row 2 \(line 3\) is not"),
    ("bool.csv", b"text,label\nfine,0\nnot fine,true\n", r"bool.csv: the label 'true' at row 2 \(line 3\) is not"),
    ("frac.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": 0.5}\n',
     r"frac.jsonl: the label 0.5 at row 2 \(line 2\) is not a class id"),
    # empty and odd files
    ("empty.csv", b"", r"empty.csv: empty file"),
    ("blank.txt", b"\n  \n", r"blank.txt: holds no texts"),
    ("wide.csv", b"text,label\na,1,extra\n", r"wide.csv: row 1 \(ending at line 2\) has more fields"),
    ("num.jsonl", b'{"text": 5, "label": 1}\n', r"num.jsonl: the text at row 1 \(line 1\) is a int"),
])
def test_bad_file_names_file_and_row(tmp_path, name, data, match):
    with pytest.raises(EdgekdValueError, match=match):
        read_texts(_write(tmp_path / name, data))


def test_other_columns_and_limits(tmp_path):
    p = _write(tmp_path / "cols.csv", b"sentence,label\nhi,1\n")
    assert read_texts(p, text_column="sentence") == (["hi"], [1])
    with pytest.raises(EdgekdValueError, match="limit must be >= 1"):
        read_texts(_write(tmp_path / "ok.csv", b"text\na\n"), limit=0)


def test_directory_and_device_are_refused(tmp_path):
    with pytest.raises(EdgekdValueError, match="is a directory"):
        read_texts(tmp_path)
    with pytest.raises(EdgekdValueError, match="does not exist"):
        read_texts(tmp_path / "nope.csv")
    if os.path.exists(os.devnull):
        with pytest.raises(EdgekdValueError, match="is not a regular file"):
            read_texts(os.devnull)
        with pytest.raises(EdgekdValueError, match="is not a regular file"):
            load_dataset(os.devnull, format="csv")
