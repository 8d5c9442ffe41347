"""edgekd.data.readers: the one text-file reader; every bad file gives an error naming file and row."""
import codecs
import json
import os

import pytest

from edgekd.data import load_dataset
from edgekd.data.readers import MAX_FIELD_CHARS, read_rows, read_text_file, read_texts
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
    import pyarrow as pa  # a dev dependency
    import pyarrow.parquet as pq

    pqp = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [y for _, y in rows]}), pqp)
    want = ([t for t, _ in rows], [y for _, y in rows])
    for p in (csvp, tsv, jl, pqp):
        assert read_texts(p) == want, p
        assert load_dataset(p).texts == want[0]
    assert read_texts(csvp, limit=2) == (want[0][:2], want[1][:2])
    assert read_texts(csvp, 1) == (want[0][:1], want[1][:1])
    txt = _write(tmp_path / "d.txt", b"one\n\ntwo\r\n")
    assert read_texts(txt) == (["one", "two"], None)


def test_unlabelled_files_give_no_labels(tmp_path):
    p = _write(tmp_path / "u.csv", b"text,label\nx,\ny,\n")
    assert read_texts(p) == (["x", "y"], None)
    assert read_texts(_write(tmp_path / "t.csv", b"text\nx\n")) == (["x"], None)
    assert read_texts(_write(tmp_path / "t.jsonl", b'{"text": "x"}\n')) == (["x"], None)
    with pytest.raises(EdgekdValueError, match=r"u2.csv: line 3: no label while other rows have one"):
        read_texts(_write(tmp_path / "u2.csv", b"text,label\nx,1\ny,\n"))


def test_utf8_bom_is_stripped(tmp_path):
    p = _write(tmp_path / "bom.csv", codecs.BOM_UTF8 + b"text,label\nhello,1\n")
    assert read_texts(p) == (["hello"], [1])
    j = _write(tmp_path / "bom.jsonl", codecs.BOM_UTF8 + b'{"text": "hello", "label": 0}\n')
    assert read_texts(j) == (["hello"], [0])
    assert load_dataset(j).texts == ["hello"]


@pytest.mark.parametrize("name,data,match", [
    ("latin1.csv", "text,label\nok,1\ncaf\u00e9 cr\u00e8me,0\n".encode("latin-1"),
     r"latin1.csv: line 3: not valid UTF-8 \(byte 0xe9 .*Latin-1"),
    ("utf16.csv", "text,label\nhello,1\n".encode("utf-16"), r"utf16.csv: is UTF-16 text"),
    ("utf16.jsonl", '{"text": "x", "label": 1}\n'.encode("utf-16-le"), r"utf16.jsonl: line 1: holds NUL bytes"),
    ("blob.csv", bytes(range(256)) * 4, r"blob.csv: line 1: holds NUL bytes: a binary"),
    ("late.jsonl", b'{"text": "a", "label": 0}\n' * 500 + b'{"text": "\xff", "label": 0}\n',
     r"late.jsonl: line 501: not valid UTF-8 \(byte 0xff"),
])
def test_not_utf8_names_file_and_line(tmp_path, name, data, match):
    p = _write(tmp_path / name, data)
    for read in (read_texts, lambda q: list(read_rows(q)), load_dataset, load_texts):
        with pytest.raises(EdgekdValueError, match=match):
            read(p)


@pytest.mark.parametrize("name,data,match", [
    # a bad JSONL line
    ("bad.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": \n', r"bad.jsonl: line 2: not valid JSON"),
    ("list.jsonl", b'{"text": "a", "label": 0}\n[1, 2]\n', r"list.jsonl: line 2: not a JSON object but a list"),
    ("nolabel.jsonl", b'{"text": "a", "label": 0}\n{"text": "b"}\n',
     r"nolabel.jsonl: line 2: needs a 'label' column, missing column\(s\) \['label'\]"),
    # a missing text column
    ("cols.csv", b"sentence,label\nhi,1\n",
     r"cols.csv: needs a 'text' column, missing column\(s\) \['text'\]; the file has columns \['sentence', 'label'\]"),
    ("cols.jsonl", b'{"sentence": "hi"}\n', r"cols.jsonl: line 1: no 'text' field \(--text-column\), has \['sentence'\]"),
    # labels that are not class ids
    ("words.csv", b"text,label\nfine,0\nnot fine,positive\n",
     r"words.csv: line 3: label 'positive' is not an integer \(a class id\)"),
    ("frac.csv", b"text,label\nfine,0\nnot fine,1.5\n", r"frac.csv: line 3: label '1.5' is not an integer"),
    ("neg.csv", b"text,label\nfine,0\nnot fine,-1\n", r"neg.csv: line 3: label -1 is outside \[0, inf\)"),
    ("bool.csv", b"text,label\nfine,0\nnot fine,true\n", r"bool.csv: line 3: label 'true' is not an integer"),
    ("frac.jsonl", b'{"text": "a", "label": 0}\n{"text": "b", "label": 0.5}\n',
     r"frac.jsonl: line 2: label 0.5 is not an integer"),
    # empty and odd files
    ("empty.csv", b"", r"empty.csv: empty file"),
    ("blank.txt", b"\n  \n", r"blank.txt: holds no texts"),
    ("wide.csv", b"text,label\na,1,extra\n", r"wide.csv: row 1 \(ending at line 2\) has more fields"),
    ("num.jsonl", b'{"text": 5, "label": 1}\n', r"num.jsonl: line 1: 'text' is a int, not a string"),
])
def test_bad_file_names_file_and_row(tmp_path, name, data, match):
    with pytest.raises(EdgekdValueError, match=match):
        read_texts(_write(tmp_path / name, data))


def test_other_columns_and_limits(tmp_path):
    p = _write(tmp_path / "cols.csv", b"sentence,label\nhi,1\n")
    assert read_texts(p, text_column="sentence") == (["hi"], [1])
    with pytest.raises(EdgekdValueError, match="limit: expected a positive integer, got 0"):
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


def _csv(rows):
    return ("text,label\n" + "\n".join(rows) + "\n").encode()


@pytest.mark.parametrize("name,data,needle", [
    ("non_integer_label.csv", _csv(["up,1", "down,bullish?"]), "line 3: label 'bullish?' is not an integer"),
    ("huge_field.csv", _csv(["x" * (MAX_FIELD_CHARS + 1) + ",1"]), "line 2: field larger than field limit"),
    ("huge_text.jsonl", (json.dumps({"text": "x" * (MAX_FIELD_CHARS + 1)}) + "\n").encode(),
     "line 1: the text is 131,073 characters, over the limit of 131,072"),
    ("missing_label.csv", _csv(["up,1", "down,", "flat,2"]), "line 3: no label while other rows have one"),
    ("label_7.csv", _csv(["up,1", "down,7"]), "line 3: label 7 is outside [0, 3)"),
    ("label_minus_1.csv", _csv(["up,-1", "down,0"]), "line 2: label -1 is outside [0, 3)"),
    ("empty.csv", b"text,label\n", "holds no texts"),
    ("utf32.csv", "text,label\nup,1\n".encode("utf-32"), "is UTF-32"),
])
def test_runtime_data_rules(tmp_path, name, data, needle):
    """The rules the runtime CLI states for --data files (num_labels = the bundle's classes)."""
    p = _write(tmp_path / name, data)
    with pytest.raises(EdgekdValueError) as e:
        read_texts(p, num_labels=3)
    assert needle in str(e.value) and name in str(e.value)


def test_label_names_and_whole_files(tmp_path):
    p = _write(tmp_path / "names.csv", _csv(["up,bullish", "down,0"]))
    assert read_texts(p, label_names=["bearish", "bullish", "neutral"]) == (["up", "down"], [1, 0])
    with pytest.raises(EdgekdValueError, match=r"line 2: label 'bullish' is not an integer \(a class id\) or one of"):
        read_texts(p, label_names=["bearish", "neutral"])
    j = _write(tmp_path / "r.json", codecs.BOM_UTF8 + b'{"a": 1}\n')
    assert json.loads(read_text_file(j)) == {"a": 1}
    with pytest.raises(EdgekdValueError, match="is UTF-16"):
        read_text_file(_write(tmp_path / "r16.json", '{"a": 1}'.encode("utf-16")))
