"""`qa index | evaluate | answer` (edgekd.qa.cli_eval.register_qa) on a throwaway parser: a tiny random
llama saved in tmp, a SQuAD-format file of word-token paragraphs, every mode, and bad inputs."""
from __future__ import annotations

import argparse
import json

import pytest

from factories import llama_word_tokenizer, save_bow_embedder, tiny_llama
from edgekd.errors import EdgekdValueError
from edgekd.qa.cli_eval import read_paragraphs, register_qa
from edgekd.runtime.retrieval import load_index

W = [f"w{i}" for i in range(44)]


def _parser():
    p = argparse.ArgumentParser(prog="edgekd")
    sub = p.add_subparsers(dest="command")
    qa = sub.add_parser("qa")
    register_qa(qa.add_subparsers(dest="qa_command"))
    return p


def run(*argv):
    args = _parser().parse_args(["qa", *map(str, argv)])
    return args.func(args)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    model = d / "model"
    tiny_llama(seed=1).save_pretrained(model)
    llama_word_tokenizer().save_pretrained(model)
    paras = [" ".join(W[i:i + 5]) for i in (4, 10, 16, 22, 28, 34)]
    data = {"data": [{"title": "pol", "paragraphs": [
        {"context": c, "qas": [{"id": f"q{j}", "question": c.split()[1] + " " + c.split()[2],
                                "answers": [{"text": c.split()[3], "answer_start": c.index(c.split()[3])}]}]}
        for j, c in enumerate(paras)]}]}
    squad = d / "squad.json"
    squad.write_text(json.dumps(data))
    return d, model, squad, paras


def test_index_and_evaluate_every_mode(files, capsys):
    d, model, squad, paras = files
    assert run("index", "--paragraphs", squad, "--kind", "bm25", "--out", d / "idx") == 0
    idx = load_index(d / "idx")
    assert idx.ids == [f"pol#{j}" for j in range(6)] and idx.texts == paras
    for mode in ("closed-book", "oracle", "top1", "sgp"):
        out = d / f"{mode}.json"
        assert run("evaluate", "--data", squad, "--mode", mode, "--model", model, "--index", d / "idx",
                   "--max-new-tokens", 2, "--k", 3, "--out", out, "--predictions", d / f"{mode}.jsonl") == 0
        rep = json.loads(out.read_text())
        m = rep["metrics"]
        assert rep["mode"] == mode and m["n"] == 6 and 0 <= m["f1"] <= 100 and m["coverage"] == 100.0
        preds = [json.loads(line) for line in (d / f"{mode}.jsonl").read_text().splitlines()]
        assert len(preds) == 6 and all(isinstance(p["answer"], str) for p in preds)
        if mode == "top1":
            # the questions are words of their own paragraph: BM25 finds every one
            assert rep["paragraph_choice"]["top1"] == 100.0
            assert [p["paragraph_id"] for p in preds] == [f"pol#{j}" for j in range(6)]
        if mode == "sgp":
            assert rep["sgp"]["k"] == 3 and 0 <= rep["paragraph_choice"]["top1"] <= 100
            assert all(len(p["candidates"]) == 3 for p in preds)
    # --limit, and an abstaining threshold
    assert run("evaluate", "--data", squad, "--mode", "sgp", "--model", model, "--limit", 2, "--threshold", 5,
               "--max-new-tokens", 1, "--out", d / "abst.json") == 0
    rep = json.loads((d / "abst.json").read_text())
    assert rep["metrics"]["n"] == 2 and rep["metrics"]["coverage"] == 0.0 and rep["index"] is None


def test_answer(files, capsys):
    d, model, squad, paras = files
    run("index", "--paragraphs", squad, "--out", d / "idx2")
    capsys.readouterr()
    assert run("answer", "--index", d / "idx2", "--model", model, "--k", 2, "--max-new-tokens", 2,
               f"{W[17]} {W[18]}") == 0
    r = json.loads(capsys.readouterr().out)
    assert r["question"] == f"{W[17]} {W[18]}" and len(r["candidates"]) == 2
    assert r["paragraph_id"] in {c["id"] for c in r["candidates"]}
    assert run("answer", "--index", d / "idx2", "--model", model, "--mode", "top1", W[30]) == 0
    assert json.loads(capsys.readouterr().out)["paragraph_id"] == "pol#4"


def test_hybrid_index_with_an_embedder_folder(files, tmp_path):
    d, model, squad, paras = files
    emb, _ = save_bow_embedder(tmp_path / "emb", paras)
    assert run("index", "--paragraphs", squad, "--kind", "hybrid", "--embedder", emb, "--weight", 0.3,
               "--fusion", "minmax", "--out", tmp_path / "hy", "--limit", 4) == 0
    idx = load_index(tmp_path / "hy")
    assert idx.kind == "hybrid" and len(idx) == 4 and idx.weight == 0.3 and idx.fusion == "minmax"


def test_paragraph_files(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "a", "text": "x y"}) + "\n\n" + json.dumps({"id": "b", "text": "z"}) + "\n")
    assert read_paragraphs(str(p)) == (["a", "b"], ["x y", "z"])
    t = tmp_path / "t.jsonl"
    t.write_text(json.dumps({"context": "c1", "question": "q", "answer": "a", "context_id": "k1"}) + "\n"
                 + json.dumps({"context": "c1", "question": "q2", "answer": "a", "context_id": "k1"}) + "\n")
    assert read_paragraphs(str(t)) == (["k1"], ["c1"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(EdgekdValueError, match="bad.jsonl:1"):
        read_paragraphs(str(bad))
    bad.write_text("not json\n")
    with pytest.raises(EdgekdValueError, match="not JSON"):
        read_paragraphs(str(bad))
    with pytest.raises(EdgekdValueError, match="not a file"):
        read_paragraphs(str(tmp_path / "none.jsonl"))
    with pytest.raises(EdgekdValueError, match="exactly one"):
        read_paragraphs(None, None)


def test_bad_command_lines(files, capsys):
    d, model, squad, _ = files
    for argv in (["index", "--split", "dev", "--paragraphs", squad, "--out", d / "x"],  # both sources
                 ["index", "--paragraphs", squad, "--kind", "colbert", "--out", d / "x"],
                 ["evaluate", "--data", squad, "--model", model, "--weight", 2, "--out", d / "x.json"],
                 ["evaluate", "--data", squad, "--model", model, "--k", 0, "--out", d / "x.json"],
                 ["evaluate", "--data", squad, "--model", model, "--mode", "rag", "--out", d / "x.json"],
                 ["answer", "q", "--model", model]):  # no --index
        with pytest.raises(SystemExit) as exc:
            run(*argv)
        assert exc.value.code == 2
    with pytest.raises(EdgekdValueError, match="not a folder"):
        run("answer", "--index", d / "missing", "--model", model, "q")
    with pytest.raises(EdgekdValueError, match="non-empty"):
        run("answer", "--index", d / "missing", "--model", model, "  ")
    with pytest.raises(EdgekdValueError, match="terms"):
        run("evaluate", "--data", squad, "--model", model, "--terms", "bleu", "--out", d / "x.json")
    with pytest.raises(EdgekdValueError, match="device"):
        run("evaluate", "--data", squad, "--model", model, "--device", "tpu", "--out", d / "x.json")
    with pytest.raises(EdgekdValueError, match="model"):
        run("evaluate", "--data", squad, "--model", d / "nomodel", "--mode", "closed-book", "--out", d / "x.json")
