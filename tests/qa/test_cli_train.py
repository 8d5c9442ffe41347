import argparse
import json

import pytest
from factories import llama_word_tokenizer, save_tiny_bert, tiny_llama

from edgekd.errors import EdgekdValueError
from edgekd.qa.cli_train import register_qa, select_triplets
from edgekd.qa.types import Triplet, write_jsonl


def _parser():
    p = argparse.ArgumentParser(prog="edgekd")
    sub = p.add_subparsers(dest="command")
    qa = sub.add_parser("qa")
    register_qa(qa.add_subparsers(dest="qa_command"))
    return p


def _run(*argv):
    args = _parser().parse_args(["qa", "train", *argv])
    return args.func(args)


def _word_triplets(n=10):
    out = []
    for i in range(n):
        ctx = " ".join(f"w{4 + (i * 3 + k) % 40}" for k in range(6)) + " w40 w41"
        out.append(Triplet(ctx, f"w{4 + i}", "w40 w41", context_id=f"doc{i % 3}#{i}", id=f"q{i}"))
    return out


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from edgekd.llm.models import save_causal_lm

    d = tmp_path_factory.mktemp("teacher")
    return save_causal_lm(tiny_llama(layers=4), d, llama_word_tokenizer())


def test_generative_sft_then_kd(teacher_dir, tmp_path, capsys):
    from edgekd.llm.models import load_causal_lm

    jl = tmp_path / "t.jsonl"
    write_jsonl(jl, _word_triplets(10))
    out = tmp_path / "sft"
    assert _run("--triplets", str(jl), "--teacher", str(teacher_dir), "--keep-layers", "2", "--epochs", "2",
                "--lr", "1e-3", "--max-length", "64", "--dev-fraction", "0.2", "--out", str(out)) == 0
    meta = json.loads((out / "qa_train.json").read_text())
    assert meta["kind"] == "generative" and meta["source"] == "synthetic" and meta["n"] == 10
    assert len(meta["kept_layers"]) == 2 and meta["result"]["n_dev"] == 2
    student, tok = load_causal_lm(out)
    assert student.config.num_hidden_layers == 2 and tok is not None
    assert "SFT" in capsys.readouterr().out
    kd = tmp_path / "kd"
    assert _run("--triplets", str(jl), "--teacher", str(teacher_dir), "--student", str(out), "--loss", "fkl",
                "--epochs", "1", "--max-length", "64", "--limit", "6", "--out", str(kd)) == 0
    meta = json.loads((kd / "qa_train.json").read_text())
    assert meta["n"] == 6 and meta["result"]["config"]["loss"] == "forward_kl" and meta["kept_layers"] is None
    with pytest.raises(EdgekdValueError, match="keep_layers"):
        _run("--triplets", str(jl), "--teacher", str(teacher_dir), "--keep-layers", "9", "--out", str(tmp_path / "x"))


def test_extractive_on_human_squad(tmp_path):
    model = save_tiny_bert(tmp_path / "bert", ["we share data with partners .", "who gets data ?"],
                           classifier=False, hf_tokenizer=True, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    paras = [{"context": f"we share data with partners {'.' * (i + 1)}",
              "qas": [{"id": f"q{i}", "question": "who gets data ?",
                       "answers": [{"text": "partners", "answer_start": 19}]}]} for i in range(6)]
    squad = tmp_path / "s.json"
    squad.write_text(json.dumps({"version": "1.1", "data": [{"title": "p.com", "paragraphs": paras}]}))
    out = tmp_path / "reader"
    assert _run("--kind", "extractive", "--human", str(squad), "--model", str(model), "--epochs", "1",
                "--max-length", "32", "--doc-stride", "8", "--out", str(out)) == 0
    meta = json.loads((out / "qa_train.json").read_text())
    assert meta["kind"] == "extractive" and meta["source"] == "human" and meta["n"] == 6
    assert (out / "model.safetensors").is_file() and (out / "reader.json").is_file()


def test_bad_inputs(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(EdgekdValueError, match="no triplets"):
        _run("--triplets", str(empty), "--out", str(tmp_path / "o"))
    with pytest.raises(EdgekdValueError, match="no such"):
        _run("--triplets", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"))
    with pytest.raises(SystemExit):
        _run("--out", str(tmp_path / "o"))  # neither --triplets nor --human
    with pytest.raises(SystemExit):
        _run("--triplets", str(empty), "--kind", "neural", "--out", str(tmp_path / "o"))
    with pytest.raises(EdgekdValueError, match="not both"):
        select_triplets(_word_triplets(4), limit=2, sample=2)
    with pytest.raises(EdgekdValueError, match="--sample"):
        select_triplets(_word_triplets(4), sample=0)


def test_select_triplets_spreads_over_documents():
    trips = _word_triplets(12)  # documents doc0, doc1, doc2
    assert select_triplets(trips, limit=5) == trips[:5]
    s = select_triplets(trips, sample=3, seed=1)
    assert len(s) == 3 and {t.context_id.split("#")[0] for t in s} == {"doc0", "doc1", "doc2"}
    assert s == select_triplets(trips, sample=3, seed=1) and len(select_triplets(trips, sample=50)) == 12
    assert [t.id for t in select_triplets(trips, sample=7, seed=2)] != [t.id for t in select_triplets(trips, sample=7, seed=3)]
