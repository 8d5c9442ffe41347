import csv
import json

import pytest

from edgekd.data import TFNS_LABEL_NAMES, load_dataset, load_tfns
from edgekd.errors import EdgekdValueError


def test_tfns_real_counts_and_quoted_newlines(tfns_dir):
    tr = load_tfns("train", root=tfns_dir)
    va = load_tfns("validation", root=tfns_dir)
    assert (len(tr), len(va)) == (9543, 2388)
    assert tr.label_names == TFNS_LABEL_NAMES
    assert tr.class_counts() == {"bearish": 1442, "bullish": 1923, "neutral": 6178}
    assert va.class_counts() == {"bearish": 347, "bullish": 475, "neutral": 1566}
    # 184 train tweets hold line breaks inside quoted fields (README of the shared data)
    assert sum(1 for t in tr.texts if "\n" in t) == 184
    assert sum(1 for t in va.texts if "\n" in t) == 43
    assert tr.texts[0].startswith("$BYND - JPMorgan reels in expectations")


def test_tfns_limit_and_stratified_sample(tfns_dir):
    tr = load_tfns("train", root=tfns_dir, limit=50)
    assert len(tr) == 50
    full = load_tfns("train", root=tfns_dir)
    sub = full.stratified_sample(1000, seed=3)
    assert len(sub) == 1000
    c = sub.class_counts()
    # proportional to 1442 / 1923 / 6178 of 9543
    assert abs(c["bearish"] - 151) <= 1 and abs(c["bullish"] - 202) <= 1 and abs(c["neutral"] - 647) <= 1
    assert sub.fingerprint() == full.stratified_sample(1000, seed=3).fingerprint()
    assert sub.fingerprint() != full.stratified_sample(1000, seed=4).fingerprint()


ROWS = [("good stock, up 5%", 1), ('multi\nline "quoted"', 0), ("flat day", 2)]


def _write_csv(path, rows, delimiter=",", header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_tsv_jsonl_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["neg", "pos", "neu"]
    paths = [
        _write_csv(tmp_path / "d.csv", ROWS),
        _write_csv(tmp_path / "d.tsv", ROWS, delimiter="\t"),
    ]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t, "label": y, "id": i}) for i, (t, y) in enumerate(ROWS)) + "\n")
    paths.append(jl)
    pqp = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": [t for t, _ in ROWS], "label": [y for _, y in ROWS]}), pqp)
    paths.append(pqp)
    for p in paths:
        ds = load_dataset(p, label_names=names)
        assert ds.texts == [t for t, _ in ROWS], p
        assert ds.labels == [1, 0, 2], p
        assert ds.label_names == names


def test_string_labels_and_custom_columns(tmp_path):
    p = _write_csv(tmp_path / "s.csv", [("a", "Positive"), ("b", "negative"), ("c", "positive")],
                   header=("sentence", "sentiment"))
    ds = load_dataset(p, text_column="sentence", label_column="sentiment")
    assert ds.label_names == ["Positive", "negative", "positive"]  # sorted distinct strings
    assert ds.labels == [0, 1, 2]
    ds2 = load_dataset(p, text_column="sentence", label_column="sentiment", label_names=["negative", "positive"])
    assert ds2.labels == [1, 0, 1]  # matching is case-insensitive when the exact name is absent


@pytest.mark.parametrize(
    "rows, header, match",
    [
        ([("ok", 1)], ("tweet", "label"), r"missing column\(s\) \['text'\]"),
        ([("ok", 1), ("   ", 0)], ("text", "label"), r"empty text at row 2"),
        ([("ok", 1), ("fine", 7)], ("text", "label"), r"unknown label '7' at row 2"),
        ([("ok", 1), ("fine", "")], ("text", "label"), r"missing label at row 2"),
    ],
)
def test_bad_csv_names_file_and_row(tmp_path, rows, header, match):
    p = _write_csv(tmp_path / "bad.csv", rows, header=header)
    with pytest.raises(EdgekdValueError, match=match) as ei:
        load_dataset(p, label_names=["a", "b", "c"])
    assert "bad.csv" in str(ei.value)


def test_bad_jsonl_and_unknown_string_label(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": 0}\n{not json}\n')
    with pytest.raises(EdgekdValueError, match=r"bad.jsonl: line 2: not valid JSON"):
        load_dataset(p)
    p2 = tmp_path / "lab.jsonl"
    p2.write_text('{"text": "a", "label": "up"}\n{"text": "b", "label": "sideways"}\n')
    with pytest.raises(EdgekdValueError, match=r"unknown label 'sideways' at row 2"):
        load_dataset(p2, label_names=["down", "up"])


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(EdgekdValueError, match="does not exist"):
        load_dataset(tmp_path / "nope.csv")
    q = tmp_path / "data.xyz"
    q.write_text("x")
    with pytest.raises(EdgekdValueError, match="cannot tell the format"):
        load_dataset(q)
    with pytest.raises(EdgekdValueError, match="format must be one of"):
        load_dataset(q, format="xml")


def test_hf_datasets_directory(tmp_path):
    """A save_to_disk directory loads through `datasets` when it is installed; without it the
    error names the missing package."""
    try:
        import datasets
    except ImportError:
        d = tmp_path / "hfds"
        d.mkdir()
        (d / "dataset_dict.json").write_text('{"splits": ["train"]}')
        with pytest.raises(EdgekdValueError, match="optional package 'datasets'"):
            load_dataset(d, split="train")
        return
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos", "neu"])})
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"text": [t for t, _ in ROWS], "label": [y for _, y in ROWS]}, features=feats)})
    dd.save_to_disk(str(tmp_path / "hfds"))
    ds = load_dataset(tmp_path / "hfds", split="train")
    assert ds.label_names == ["neg", "pos", "neu"] and ds.labels == [1, 0, 2]
