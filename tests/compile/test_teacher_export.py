"""Hugging Face teachers go through the same spec -> variants -> parity -> bundle path."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from factories import TEXTS
from edgekd.compile import get_export_spec, registered_kinds
from edgekd.runtime import Bundle


def test_registered_kinds():
    assert {"bilstm_attention", "hf_sequence_classification"} <= set(registered_kinds())


def test_teacher_bundle_parity(teacher_bundle):
    m = json.loads((teacher_bundle / "manifest.json").read_text())
    assert m["model_kind"] == "hf_sequence_classification" and m["explanations"] is None
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i["shape"] == ["batch", "sequence"] for i in m["inputs"])
    assert m["export_check"]["random_inputs_max_abs_logit_diff"] <= 1e-4
    assert m["export_check"]["graph"]["domains"] == ["ai.onnx"]
    for v in m["variants"]:
        p = v["parity"]
        if v["precision"] == "fp32":
            assert p["max_abs_logit_diff"] <= 1e-4 and p["label_agreement"] == 1.0
        else:
            assert p["max_abs_logit_diff"] <= 0.05
            assert v["quantization"]["scheme"] == "static"  # calibrated QDQ, fused into QLinearMatMul / QGemm
            assert any(op in ("QLinearMatMul", "com.microsoft::QGemm") for op in v["operators"])


def test_teacher_dynamic_shapes_and_runtime(teacher_bundle):
    """Shapes other than the export's dummy (batch 2 x 8): batch 1 x 1 ... 5 x 24."""
    m = json.loads((teacher_bundle / "manifest.json").read_text())
    spec = get_export_spec("hf_sequence_classification")(m["source"]["source"])
    sess = ort.InferenceSession(str(teacher_bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    for b, t in [(1, 1), (5, 24), (3, 9)]:
        feeds = spec.dummy_inputs(batch=b, seq=t, seed=b)
        got = sess.run(["logits"], feeds)[0]
        assert np.abs(got - spec.reference_logits(feeds)).max() <= 1e-4
    bundle = Bundle.load(teacher_bundle)
    p = bundle.predict(TEXTS[:2] + ["", "word " * 200])
    assert p.explanations is None and p.empty.tolist() == [False, False, True, False]
    assert np.isfinite(p.probabilities).all()
