"""`edgekd demo` end to end on a tiny profile (real TFNS slices, a tiny random teacher, no compile step)."""
from __future__ import annotations

import json

import pytest

from edgekd.cli import main


def test_demo_with_a_profile_file_and_overrides(tmp_path, tiny_teacher_dir, tfns_dir, capsys):
    prof = tmp_path / "tiny.toml"
    prof.write_text('[data]\nsample = 90\nvalid_sample = 45\n[ig]\nsteps = 2\nsample = 20\nvalid_sample = 15\n'
                    '[student]\nembeddings = "random"\nembed_dim = 8\nhidden_size = 8\n'
                    '[train]\nmethods = ["none", "dixtill"]\nepochs = 1\n[eval]\nig_steps = 2\n')
    out = tmp_path / "run"
    argv = ["demo", "--profile", str(prof), "--no-compile", "--teacher", str(tiny_teacher_dir), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "train.alpha=0.7", "--threads", "1",
            "ig.sample=25"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "== TFNS demo (tiny profile) ==" in printed and "| student: dixtill |" in printed
    assert "note: tiny profile: teacher IG with 2 steps (paper: 50) on 25 of the student training texts" in printed
    rep = json.loads((out / "results.json").read_text())
    assert rep["profile"] == "tiny" and [r["method"] for r in rep["rows"]] == ["teacher", "none", "dixtill"]
    assert rep["config"]["train"]["alpha"] == 0.7 and rep["config"]["teacher"]["model"] == str(tiny_teacher_dir)
    assert rep["data"] == {**rep["data"], "train": 90, "valid": 45}
    assert rep["attributed"] == {"train": 25, "valid": 15}
    assert not (out / "bundles").exists()


@pytest.mark.slow
def test_run_pipeline_compiles_and_compares(tmp_path, tiny_teacher_dir, tfns_dir):
    """The whole job in Python: distillation, then teacher and students -> bundles -> benchmarks -> table."""
    from edgekd.distill import DistillConfig
    from edgekd.pipeline import run_pipeline

    cfg = DistillConfig(
        data={"sample": 60, "valid_sample": 30}, teacher={"model": str(tiny_teacher_dir), "max_length": 24},
        ig={"steps": 2, "sample": 10, "valid_sample": 10},
        student={"embeddings": "random", "embed_dim": 8, "hidden_size": 8, "max_length": 16},
        train={"methods": ["dixtill"], "epochs": 1}, eval={"ig_steps": 2},
        run={"out": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "progress": False},
    )
    seen = []
    res = run_pipeline(cfg, log=None, on_distilled=seen.append,
                       compile_options={"arm64": False, "bench_texts": 8, "min_time": 0.01})
    assert seen == [res["report"]] and [r["method"] for r in res["report"]["rows"]] == ["teacher", "dixtill"]
    rows = res["compare"]["results"]["x86_64"]
    assert [(r["name"], r["precision"]) for r in rows] == [
        ("teacher", "fp32"), ("teacher", "int8"), ("dixtill", "fp32"), ("dixtill", "int8")]
    assert all(r["accuracy_measured_on"] == "30 labelled texts" for r in rows)
    bundles = tmp_path / "run" / "bundles"
    assert (bundles / "compare.md").read_text().startswith("## x86-64")
    assert {"teacher", "dixtill"} <= {p.name for p in bundles.iterdir()}
