import json

import pytest

from edgekd.errors import EdgekdValueError
from edgekd.qa.data import default_policyqa_dir, load_policyqa, load_squad, paragraphs_of
from edgekd.qa.types import Triplet, read_jsonl, write_jsonl


def _squad(tmp_path, data):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"version": "1.1", "data": data}))
    return p


def test_load_squad_small(tmp_path):
    p = _squad(tmp_path, [{"title": "a.com", "paragraphs": [
        {"context": "We share data with partners.", "qas": [
            {"id": "q1", "question": "Who gets data?", "type": "t",
             "answers": [{"text": "partners", "answer_start": 19}]},
            {"id": "q2", "question": "No answer?", "answers": []}]},
        {"context": "  ", "qas": []}]}])
    paras, trips = load_squad(p)
    assert [x.id for x in paras] == ["a.com#0"]
    assert len(trips) == 1 and trips[0].answer == "partners" and trips[0].answer_start == 19
    assert trips[0].context[19:19 + len("partners")] == "partners"
    assert trips[0].meta == {"answers": ["partners"], "type": "t"}
    assert paragraphs_of(trips)[0].id == "a.com#0"


def test_load_squad_errors(tmp_path):
    with pytest.raises(EdgekdValueError, match="no such"):
        load_squad(tmp_path / "nope.json")
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    with pytest.raises(EdgekdValueError, match="not JSON"):
        load_squad(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(EdgekdValueError, match="SQuAD"):
        load_squad(bad)
    with pytest.raises(EdgekdValueError, match="split"):
        load_policyqa("train")


def test_jsonl_roundtrip_and_errors(tmp_path):
    t = Triplet("ctx", "q?", "a", "p#0", "synthetic", -1, "x", {"k": 1})
    assert write_jsonl(tmp_path / "t.jsonl", [t, t]) == 2
    back = list(read_jsonl(tmp_path / "t.jsonl"))
    assert back == [t, t] and back[0].meta == {"k": 1}
    (tmp_path / "bad.jsonl").write_text('{"context": "c", "question": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(EdgekdValueError, match="bad.jsonl:2"):
        list(read_jsonl(tmp_path / "bad.jsonl"))
    (tmp_path / "miss.jsonl").write_text('{"context": "c"}\n')
    with pytest.raises(EdgekdValueError, match="miss.jsonl:1.*question"):
        list(read_jsonl(tmp_path / "miss.jsonl"))


def test_real_policyqa_counts():
    root = default_policyqa_dir()
    if not (root / "dev.json").is_file():
        pytest.fail(f"PolicyQA not found at {root}: set EDGEKD_POLICYQA")
    paras, trips = load_policyqa("dev", root)
    assert len(paras) == 574 and len(trips) == 3809
    assert len({p.group for p in paras}) == 20
    tparas, _ = load_policyqa("test", root)
    assert len(tparas) == 500
    assert not ({p.group for p in paras} & {p.group for p in tparas})
