"""Seeds for the final comparison: mean +- sd and paired counts, and the run that trains them."""
from __future__ import annotations

import json

import pytest

from edgekd.distill.seeds import seed_table, summarize_seeds


def _rows(f1s, acc=0.8):
    return [{"accuracy": acc, "macro_f1": f, "feature_agreement_attention": None} for f in f1s]


def test_summary_mean_sd_and_paired_counts():
    per = {"none": _rows([0.70, 0.72, 0.71]), "kl": _rows([0.73, 0.71, 0.74]), "dixtill": _rows([0.74, 0.75, 0.74])}
    s = summarize_seeds(per, [0, 1, 2])
    assert s["methods"]["kl"]["macro_f1"]["mean"] == pytest.approx(0.7266667)
    assert s["methods"]["kl"]["macro_f1"]["sd"] == pytest.approx(0.0152753, rel=1e-5)  # sample sd
    assert "feature_agreement_attention" not in s["methods"]["kl"]  # None values: no summary
    # seed 0: 0.74>0.73>0.70 yes; seed 1: 0.75>0.71 but 0.71<0.72; seed 2: 0.74 vs 0.74 is a tie (not >)
    assert s["paired"] == {"dixtill > kl": 2, "kl > none": 2, "dixtill > kl > none": 1}
    md = seed_table(s)
    assert "| kl | 0.800 ± 0.000 | 0.727 ± 0.015 | - |" in md
    assert "dixtill > kl > none: 1/3" in md
    with pytest.raises(ValueError, match="has 2 rows for 3 seeds"):
        summarize_seeds({"kl": _rows([0.1, 0.2])}, [0, 1, 2])


def test_demo_with_two_seeds(tmp_path, tiny_teacher_dir, tfns_dir, capsys):
    from edgekd.cli import main

    out = tmp_path / "run"
    argv = ["demo", "--profile", "quick", "--no-compile", "--teacher", str(tiny_teacher_dir), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--threads", "1", "data.sample=60",
            "data.valid_sample=30", "ig.steps=2", "ig.sample=10", "ig.valid_sample=10", "student.embeddings=random",
            "student.embed_dim=8", "student.hidden_size=8", "train.epochs=1", "eval.ig_steps=2",
            "eval.baselines=false", 'train.methods=["none", "kl"]', "train.seeds=2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "results.json").read_text())
    assert rep["seeds"]["seeds"] == [0, 1] and set(rep["seeds"]["methods"]) == {"none", "kl"}
    assert rep["seeds"]["paired"].keys() == {"kl > none"}
    # seed 0 is the table's own row; seed 1 was trained into <method>/seed1
    assert rep["seeds"]["methods"]["kl"]["macro_f1"]["values"][0] == rep["rows"][2]["macro_f1"]
    assert (out / "kl" / "seed1" / "best" / "model.safetensors").is_file()
    assert "Over 2 student seeds (0, 1)" in printed and "Over 2 student seeds" in (out / "results.md").read_text()
