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


def test_bad_jsonl_line(tmp_path):
    p = _write(tmp_path / "bad.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": \n')
    with pytest.raises(EdgekdValueError, match=r"bad.jsonl: line 2 is not valid JSON"):
        read_texts(p)
    q = _write(tmp_path / "list.jsonl", b'{"text": "a", "label": 0}\n[1, 2]\n')
    with pytest.raises(EdgekdValueError, match=r"list.jsonl: line 2 is not a JSON object"):
        read_texts(q)
    r = _write(tmp_path / "nolabel.jsonl", b'{"text": "a", "label": 0}\n{"text": "b"}\n')
    with pytest.raises(EdgekdValueError, match=r"nolabel.jsonl line 2: missing column\(s\) \['label'\]"):
        read_texts(r)


def test_missing_text_column(tmp_path):
    p = _write(tmp_path / "cols.csv", b"sentence,label\nhi,1\n")
    with pytest.raises(EdgekdValueError, match=r"cols.csv: missing column\(s\) \['text'\]; the file has columns "
                                               r"\['sentence', 'label'\]"):
        read_texts(p)
    assert read_texts(p, text_column="sentence") == (["hi"], [1])
    j = _write(tmp_path / "cols.jsonl", b'{"sentence": "hi"}\n')
    with pytest.raises(EdgekdValueError, match=r"cols.jsonl line 1: missing column\(s\) \['text'\]"):
        read_texts(j)


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


@pytest.mark.parametrize("label", ["positive", "1.5", "-1", "true"])
def test_non_integer_labels(tmp_path, label):
    p = _write(tmp_path / "lab.csv", f"text,label\nfine,0\nnot fine,{label}\n".encode())
    with pytest.raises(EdgekdValueError, match=rf"lab.csv: the label '{label}' at row 2 \(line 3\) is not a class id"):
        read_texts(p)
    j = _write(tmp_path / "lab.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": 0.5}\n')
    with pytest.raises(EdgekdValueError, match=r"lab.jsonl: the label 0.5 at row 2 \(line 2\) is not a class id"):
        read_texts(j)


def test_empty_and_odd_files(tmp_path):
    with pytest.raises(EdgekdValueError, match="empty.csv: empty file"):
        read_texts(_write(tmp_path / "empty.csv", b""))
    with pytest.raises(EdgekdValueError, match="blank.txt: holds no texts"):
        read_texts(_write(tmp_path / "blank.txt", b"\n  \n"))
    with pytest.raises(EdgekdValueError, match=r"wide.csv: row 1 \(ending at line 2\) has more fields"):
        read_texts(_write(tmp_path / "wide.csv", b"text,label\na,1,extra\n"))
    with pytest.raises(EdgekdValueError, match=r"num.jsonl: the text at row 1 \(line 1\) is a int"):
        read_texts(_write(tmp_path / "num.jsonl", b'{"text": 5, "label": 1}\n'))
    with pytest.raises(EdgekdValueError, match="limit must be >= 1"):
        read_texts(_write(tmp_path / "ok.csv", b"text\na\n"), limit=0)
