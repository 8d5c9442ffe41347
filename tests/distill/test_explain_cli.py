"""Explanations (text + HTML), GloVe matrix building, TOML config, and the CLI end to end."""
import json

import numpy as np
import pytest
import torch

from edgekd.cli import main
from edgekd.data import WordTokenizer
from edgekd.distill import DistillConfig, explain, save_html
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


def test_toml_config(tmp_path):
    p = tmp_path / "distill.toml"
    p.write_text('methods = ["none", "dixtill"]\nepochs = 3\n[teacher]\nepochs = 2.0\nmax_length = 48\n'
                 '[annotate]\nig_steps = 7\n')
    cfg = DistillConfig.from_toml(p, alpha=0.7)
    assert cfg.methods == ["none", "dixtill"] and cfg.epochs == 3 and cfg.teacher_epochs == 2.0
    assert cfg.teacher_max_length == 48 and cfg.ig_steps == 7 and cfg.alpha == 0.7
    p.write_text("epoch = 3\n")
    with pytest.raises(EdgekdValueError, match="unknown setting 'epoch'"):
        DistillConfig.from_toml(p)
    with pytest.raises(EdgekdValueError, match="unknown"):
        DistillConfig(methods=["nope"]).validate()


def test_student_seed_varies_the_students_only():
    cfg = DistillConfig(seed=4)
    assert cfg.resolved_student_seed == 4 and cfg.train_config("kl").seed == 4
    cfg = DistillConfig(seed=4, student_seed=9)
    assert cfg.resolved_student_seed == 9 and cfg.train_config("kl").seed == 9 and cfg.seed == 4
    cfg.validate()
    with pytest.raises(EdgekdValueError, match="student_seed must be an int"):
        DistillConfig(student_seed="x").validate()
    with pytest.raises(EdgekdValueError, match="seed must be an int"):
        DistillConfig(seed=1.5).validate()


def test_device_setting():
    assert DistillConfig(device="cpu").resolved_device == "cpu"
    assert DistillConfig().resolved_device == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EdgekdValueError, match="device must be"):
        DistillConfig(device="tpu").validate()


def test_cli_end_to_end_tiny(tmp_path, tiny_teacher_dir, tfns_dir, capsys):
    out = tmp_path / "run"
    cfgf = tmp_path / "distill.toml"
    cfgf.write_text("[student]\nhidden_size = 8\n")
    argv = ["distill", "--config", str(cfgf), "--teacher", str(tiny_teacher_dir), "--limit", "120",
            "--valid-limit", "60", "--epochs", "1", "--embeddings", "random", "--ig-steps", "2",
            "--attribute-limit", "30", "--eval-attribute-limit", "20", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--set", "student_ig_steps=2",
            "--set", "embed_dim=8"]
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
    assert main(["explain", "--model", str(bundle), "--text", "$AAPL beats estimates", "--html", str(html)]) == 0
    assert "prediction:" in capsys.readouterr().out and html.exists()
    # a user error is one clear line and exit code 2
    assert main(["explain", "--model", str(bundle)]) == 2
    assert "give --text or --file" in capsys.readouterr().err


def test_cli_parses_every_command():
    from edgekd.cli import build_parser

    p = build_parser()
    a = p.parse_args(["demo", "--profile", "full", "--threads", "2", "--set", "epochs=3"])
    assert a.profile == "full" and a.func.__name__ == "cmd_demo"
    a = p.parse_args(["teacher", "finetune", "--out", "x", "--limit", "10"])
    assert a.func.__name__ == "cmd_finetune" and a.limit == 10
    a = p.parse_args(["teacher", "annotate", "--teacher", "t", "--out", "c", "--ig-steps", "3"])
    assert a.func.__name__ == "cmd_annotate" and a.ig_steps == 3
    from edgekd.distill.api import profile_config

    q = profile_config("quick", epochs=2)
    assert q.epochs == 2 and q.ig_steps == 8 and q.notes and profile_config("full").ig_steps == 50


def test_profile_notes_describe_the_settings_used():
    from edgekd.distill.api import profile_config

    q = profile_config("quick")
    assert any("2,000" in n and "teacher" in n for n in q.notes)
    small = profile_config("quick", teacher_train_limit=100, train_limit=300, ig_steps=2, epochs=1)
    text = "\n".join(small.notes)
    assert "100 (stratified) training texts" in text and "300 (stratified)" in text
    assert "IG with 2 steps" in text and "at most 1 epochs" in text
    assert "2,000" not in text and "4,000" not in text
    assert profile_config("quick", notes=["mine"]).notes == ["mine"]
