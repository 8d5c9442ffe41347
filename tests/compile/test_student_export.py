"""Student export: standard ops only, exact packed-sequence semantics, parity with PyTorch, int8 bounds."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from factories import LABELS, TEXTS, save_random_student
from edgekd.compile import ParityError, compile_student, get_export_spec
from edgekd.compile.student_onnx import build_student_onnx, load_student_weights, student_numpy_reference
from edgekd.errors import EdgekdValueError


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _feeds(V, lengths, T, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, V, (len(lengths), T)).astype(np.int64)
    mask = (np.arange(T)[None] < np.asarray(lengths)[:, None]).astype(np.int64)
    return ids * mask, mask


def test_graph_is_standard_onnx_with_dynamic_axes(student_dir):
    model = build_student_onnx(load_student_weights(student_dir))
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} == {""}
    assert any(n.op_type == "LSTM" and any(a.name == "direction" and a.s == b"bidirectional" for a in n.attribute)
               for n in model.graph.node)
    assert model.opset_import[0].version >= 17
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [["batch", "sequence"], ["batch", "sequence"]]
    assert [o.name for o in model.graph.output] == ["logits", "attention"]


@pytest.mark.parametrize("lengths,T", [([1], 1), ([7, 3, 1, 5], 7), ([13, 13], 13), ([2, 11, 6], 11)])
def test_onnx_matches_pytorch_and_numpy(student_dir, lengths, T):
    spec = get_export_spec("bilstm_attention")(student_dir)
    V = spec.config["vocab_size"]
    ids, mask = _feeds(V, lengths, T, seed=T)
    logits, att = _session(build_student_onnx(spec.weights)).run(None, {"input_ids": ids, "attention_mask": mask})
    ref = spec.reference_logits({"input_ids": ids, "attention_mask": mask})
    assert np.abs(logits - ref).max() <= 1e-4
    import torch

    with torch.no_grad():
        pt = spec.torch_model()(torch.from_numpy(ids), torch.from_numpy(mask))
    assert np.abs(att - pt.attention.numpy()).max() <= 1e-5
    assert np.abs(logits - student_numpy_reference(spec.weights, ids, mask)).max() <= 1e-4
    assert np.all(att[mask == 0] == 0.0)
    np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-5)


def test_padding_does_not_change_outputs(student_dir):
    """Same row alone and inside a longer padded batch: identical logits (the reverse direction
    starts at the last valid token, padding never leaks in)."""
    sess = _session(build_student_onnx(load_student_weights(student_dir)))
    ids, mask = _feeds(20, [4], 4)
    alone = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    big_ids = np.zeros((2, 10), np.int64)
    big_ids[0, :4] = ids[0]
    big_ids[1] = np.arange(2, 12)
    big_mask = (big_ids != 0).astype(np.int64)
    big_mask[0, :4] = 1
    padded = sess.run(["logits"], {"input_ids": big_ids, "attention_mask": big_mask})[0]
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-6)


def test_bundle_records_parity_and_int8_within_bounds(student_bundle):
    m = json.loads((student_bundle / "manifest.json").read_text())
    ids = {v["id"] for v in m["variants"]}
    assert ids == {"x86_64-fp32", "x86_64-int8", "x86_64-int8-vnni", "arm64-fp32", "arm64-int8"}
    for v in m["variants"]:
        p = v["parity"]
        assert p["slice_size"] == len(TEXTS)
        if v["precision"] == "fp32":
            assert p["max_abs_logit_diff"] <= 1e-4 and p["label_agreement"] == 1.0
            assert all("::" not in op for op in v["operators"])  # default domain only
            assert v["quantization"] is None
        else:
            # stated bounds for int8 (random tiny student, 12 texts): logits within 0.25,
            # >= 90% label agreement with fp32 PyTorch, accuracy / macro-F1 within 10 points
            assert p["max_abs_logit_diff"] <= 0.25
            assert p["label_agreement"] >= 0.9
            assert abs(p["accuracy_delta"]) <= 0.1 and abs(p["macro_f1_delta"]) <= 0.1
            assert v["quantization"]["weight_type"] == "QInt8"
            assert v["quantization"]["reduce_range"] == (v["id"] == "x86_64-int8")
            # static QDQ (the default): int8 embedding Gather and MatMuls; no static LSTM kernel in ORT
            assert v["quantization"]["scheme"] == "static" and v["quantization"]["batch_invariant"]
            assert "QLinearMatMul" in v["operators"] and "LSTM" in v["operators"]
            assert v["quantization"]["calibration"] == {"texts": 12, "source": "held-out slice (eval_texts)"}
        assert v["optimization"]["level"] == "ORT_ENABLE_EXTENDED"
    assert m["preprocessing"]["max_length"] == 16 and m["preprocessing"]["pad_id"] == 0
    assert m["explanations"] == "attention" and m["label_names"] == ["bearish", "bullish", "neutral"]
    assert (student_bundle.with_suffix(".zip")).is_file()


def test_fp32_parity_failure_is_loud(student_dir, tmp_path, monkeypatch):
    spec_cls = get_export_spec("bilstm_attention")
    orig = spec_cls.reference_logits
    monkeypatch.setattr(spec_cls, "reference_logits", lambda self, feeds: orig(self, feeds) + 1e-3)
    with pytest.raises(ParityError, match="parity"):
        compile_student(student_dir, tmp_path / "b", eval_texts=TEXTS, arm64_check=False, progress=False)
    assert not (tmp_path / "b").exists()


def test_bad_inputs(student_dir, tmp_path):
    with pytest.raises(EdgekdValueError, match="eval_texts"):
        compile_student(student_dir, tmp_path / "a", eval_texts=[], progress=False)
    with pytest.raises(EdgekdValueError, match="eval_labels"):
        compile_student(student_dir, tmp_path / "a", eval_texts=TEXTS, eval_labels=LABELS[:-1], progress=False)
    with pytest.raises(EdgekdValueError, match="targets"):
        compile_student(student_dir, tmp_path / "a", eval_texts=TEXTS, targets=("riscv",), progress=False)
    with pytest.raises(EdgekdValueError, match="model_kind"):
        get_export_spec("nope")
    bad = save_random_student(tmp_path / "bad", 30)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["hidden_size"] = 5
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgekdValueError, match="shape"):
        load_student_weights(bad)


def test_cli_compile(student_dir, tmp_path, capsys):
    import csv

    from factories import LABELS
    from edgekd.cli import main
    from edgekd.runtime import Bundle

    data = tmp_path / "eval.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(zip(TEXTS, LABELS))
    out = tmp_path / "cli_bundle"
    rc = main(["compile", "bilstm_attention", str(student_dir), str(out), "--eval-data", str(data),
               "--targets", "x86_64", "--precisions", "fp32", "--max-length", "8", "--no-arm64-check"])
    assert rc == 0 and capsys.readouterr().out.strip().endswith(str(out))
    m = json.loads((out / "manifest.json").read_text())
    assert [v["id"] for v in m["variants"]] == ["x86_64-fp32"] and m["preprocessing"]["max_length"] == 8
    assert Bundle.load(out.with_suffix(".zip")).variant["id"] == "x86_64-fp32"
    assert main(["compile", "bilstm_attention", str(student_dir), str(out), "--eval-data", str(data)]) == 2
    assert "exists" in capsys.readouterr().err
