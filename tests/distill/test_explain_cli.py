"""Explanations (text + HTML), GloVe matrix building, and `edgekd distill` / `edgekd explain` end to end."""
import json

import numpy as np
import pytest
import torch

from edgekd.cli import main
from edgekd.data import WordTokenizer
from edgekd.distill import explain, save_html
from edgekd.distill.embeddings import glove_matrix
from edgekd.errors import EdgekdValueError
from edgekd.students import BiLSTMAttentionStudent

TEXTS = ["$AAPL soars 5% after <earnings> beat", "Stocks fall as rates rise", "$AAPL flat"]


def test_explain_text_and_html(tmp_path):
    tok = WordTokenizer.train(TEXTS)
    torch.manual_seed(0)
    st = BiLSTMAttentionStudent(tok.vocab_size, embed_dim=8, hidden_size=8, label_names=["bear", "bull", "neutral"])
    exps = explain(st, tok, TEXTS[:2])
    e = exps[0]
    assert e.words == ["$AAPL", "soars", "5%", "after", "<", "earnings", ">", "beat"]
    assert e.tokens == ["$aapl", "soars", "5%", "after", "<", "earnings", ">", "beat"]
    assert e.attention.shape == (8,) and e.attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert e.label in ["bear", "bull", "neutral"] and e.probs.sum() == pytest.approx(1.0, abs=1e-5)
    txt = e.to_text()
    assert txt.startswith("prediction: ") and "earnings" in txt and "#" in txt
    assert len(e.top_words(3)) == 3
    page = save_html(exps, tmp_path / "x.html")
    html = page.read_text()
    assert html.startswith("<!doctype html>") and html.count('class="ex"') == 2
    assert "&lt;" in html and "<earnings>" not in html  # escaped
    assert html.count('<span class="w"') == 8 + 5
    with pytest.raises(EdgekdValueError, match="text 0 is empty"):
        explain(st, tok, [" "])


def test_glove_matrix_from_files(tmp_path):
    words = ["the", "aapl", "5", "stocks", "fall"]
    vecs = np.arange(len(words) * 50, dtype=np.float32).reshape(len(words), 50)
    np.save(tmp_path / "v.npy", vecs)
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    tok = WordTokenizer.train(["$AAPL up 5% stocks fall", "the end"])
    mat, found = glove_matrix(tok, tmp_path / "v.npy", tmp_path / "words.txt")
    v = tok.get_vocab()
    assert mat.shape == (tok.vocab_size, 50) and np.all(mat[0] == 0)
    np.testing.assert_array_equal(mat[v["$aapl"]], vecs[1])  # ticker without '$'
    np.testing.assert_array_equal(mat[v["5%"]], vecs[2])  # number without '%'
    np.testing.assert_array_equal(mat[v["fall"]], vecs[4])
    assert found == pytest.approx(5 / (tok.vocab_size - 2))
    with pytest.raises(EdgekdValueError, match="index words but"):
        (tmp_path / "short.txt").write_text("the\n")
        glove_matrix(tok, tmp_path / "v.npy", tmp_path / "short.txt")


def test_cli_end_to_end_tiny(tmp_path, tiny_teacher_dir, tfns_dir, capsys):
    out = tmp_path / "run"
    cfgf = tmp_path / "distill.toml"
    cfgf.write_text("[student]\nhidden_size = 8\n")
    argv = ["distill", "--config", str(cfgf), "--teacher", str(tiny_teacher_dir), "--sample", "120",
            "--valid-sample", "60", "--epochs", "1", "--embeddings", "random", "--ig-steps", "2",
            "--ig-sample", "30", "--ig-valid-sample", "20", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--set", "eval.ig_steps=2",
            "student.embed_dim=8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| student: dixtill |" in printed and "paper acc / F1" in printed
    rep = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rep["rows"]] == ["teacher", "none", "kl", "mse", "dixtill"]
    assert rep["data"] == {**rep["data"], "train": 120, "valid": 60}
    assert rep["attributed"] == {"train": 30, "valid": 20}
    for r in rep["rows"][1:]:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["feature_agreement_attention"] <= 1
        assert r["parameters"] > 0 and r["size_mb"] > 0
    assert (out / "results.md").read_text().startswith("| model |")
    bundle = out / "dixtill" / "best"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in bundle.iterdir()}
    html = tmp_path / "e.html"
    assert main(["explain", "--model", str(bundle), "--text", "$AAPL beats estimates", "--out", str(html)]) == 0
    assert "prediction:" in capsys.readouterr().out and html.exists()
    # a user error is one clear line and exit code 2
    assert main(["explain", "--model", str(bundle)]) == 2
    assert "give --text or --file" in capsys.readouterr().err
