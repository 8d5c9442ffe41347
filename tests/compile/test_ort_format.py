"""ORT-format variants (`compile --ort`): an .ort copy of every variant for its target's platform
and the per-target required-operators configs, listed and checksummed in the manifest, loaded by
the runtime with `format="ort"` and verified like every other file."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from factories import LABELS, TEXTS
from edgekd.errors import BundleError, EdgekdValueError
from edgekd.runtime import Bundle


@pytest.fixture(scope="module")
def ort_bundle(tmp_path_factory, student_dir):
    from edgekd.compile import compile_student

    return compile_student(student_dir, tmp_path_factory.mktemp("ort") / "student", eval_texts=TEXTS,
                           eval_labels=LABELS, max_length=16, arm64_check=False, progress=False, ort_format=True)


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_compile_writes_ort_copies_and_operator_configs(ort_bundle):
    m = _manifest(ort_bundle)
    assert m["ort"]["required_operators"] == {"arm64": "ort/required_operators.arm64.config",
                                              "x86_64": "ort/required_operators.x86_64.config"}
    assert m["ort"]["optimization_style"] == "Fixed"
    for target, config in m["ort"]["required_operators"].items():
        assert config in m["files"] and m["files"][config]["size"] > 0
        lines = [ln for ln in (ort_bundle / config).read_text().splitlines() if ln and not ln.startswith("#")]
        ops = {op for ln in lines for op in ln.split(";")[2].split(",")}
        assert ops & {"LSTM", "DynamicQuantizeLSTM"}, lines  # the student's recurrent core, fp32 and int8
        assert any(ln.startswith("ai.onnx;") for ln in lines)
    seen = set()
    for v in m["variants"]:
        o = v["ort"]
        assert o["file"] == f"ort/{v['file'][:-len('.onnx')]}.{v['target']}.ort"
        assert o["file"] in m["files"] and m["files"][o["file"]]["size"] > 0
        assert o["target_platform"] == {"x86_64": "generic", "arm64": "arm"}[v["target"]]
        assert o["required_operators"] == m["ort"]["required_operators"][v["target"]]
        if v["precision"] == "fp32":
            assert o["max_abs_logit_diff_vs_onnx"] <= m["fp32_tolerance"]
        seen.add(o["file"])
    assert seen == {f"ort/{p.name}" for p in (ort_bundle / "ort").glob("*.ort")}


@pytest.mark.parametrize("target,precision", [("x86_64", "fp32"), ("x86_64", "int8"), ("arm64", "fp32"),
                                              ("arm64", "int8")])
def test_runtime_runs_the_ort_copy(ort_bundle, target, precision):
    zip_path = ort_bundle.with_suffix(".zip")
    onnx = Bundle.load(zip_path, target=target, precision=precision)
    ort = Bundle.load(zip_path, target=target, precision=precision, format="ort")
    assert ort.variant["id"] == onnx.variant["id"]
    assert ort.variant["file"] == onnx.variant["ort"]["file"] and ort.variant["file"].endswith(".ort")
    a, b = onnx.predict(TEXTS), ort.predict(TEXTS)
    bound = onnx.variant["ort"]["max_abs_logit_diff_vs_onnx"]  # measured on these texts at compile time
    assert np.abs(a.logits - b.logits).max() <= bound + 1e-6
    if precision == "fp32":
        assert bound <= 1e-4 and a.labels == b.labels
    assert b.explanations is not None and len(b.explanations) == len(TEXTS)


def test_predict_cli_takes_format_ort(ort_bundle, capsys):
    from edgekd.cli import main

    assert main(["predict", str(ort_bundle.with_suffix(".zip")), TEXTS[0], "--precision", "fp32", "--format",
                 "ort"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    ref = Bundle.load(ort_bundle, precision="fp32").predict([TEXTS[0]])
    assert row["label"] == ref.labels[0]


def test_ort_files_are_verified_and_required(ort_bundle, student_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ort_bundle, bad)
    victim = next((bad / "ort").glob("*.arm64.ort"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        Bundle.load(bad, format="ort")
    # a bundle compiled without --ort has no copy to run in that format
    assert "ort" not in _manifest(student_bundle)
    with pytest.raises(BundleError, match="no ORT-format copy"):
        Bundle.load(student_bundle, format="ort")
    with pytest.raises(EdgekdValueError, match="format"):
        Bundle.load(ort_bundle, format="tflite")
