"""ONNX export of token-pruned / head-pruned models and int8 post-training quantisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from edgekd.errors import EdgekdValueError  # noqa: E402
from edgekd.prune import TokenPruningConfig, apply_token_pruning, prune_heads  # noqa: E402
from edgekd.prune.export import check_onnx_parity, export_onnx  # noqa: E402
from edgekd.quantize import quantize_dynamic, quantize_static  # noqa: E402
from factories import make_batch, tiny_classifier, tiny_encoder  # noqa: E402


def _op_types(path) -> set[str]:
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    for f in model.functions:
        ops |= {n.op_type for n in f.node}
    return ops


@pytest.fixture(scope="module")
def pruned_classifier_onnx(tmp_path_factory):
    pruned = apply_token_pruning(tiny_classifier(0), TokenPruningConfig(layer=2, keep_ratio=0.5)).eval()
    path = tmp_path_factory.mktemp("onnx") / "pruned.onnx"
    export_onnx(pruned, path, seq_len=16, batch_size=2)
    return pruned, path


def test_token_pruned_export_has_topk_gather_and_fp32_parity(pruned_classifier_onnx):
    pruned, path = pruned_classifier_onnx
    ops = _op_types(path)
    assert "TopK" in ops and ({"Gather", "GatherElements", "GatherND"} & ops)
    # dynamic batch and sequence: other shapes than the traced one, with padding
    for batch in (make_batch(1, 16, seed=1), make_batch(3, 23, lengths=[23, 11, 3], seed=2), make_batch(5, 40, seed=3)):
        diff = check_onnx_parity(pruned, path, batch, atol=1e-5, rtol=1e-4)
        assert diff < 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits"]


def test_token_pruned_encoder_export_keeps_k_tokens(tmp_path):
    pruned = apply_token_pruning(tiny_encoder(1), TokenPruningConfig(layer=1, keep_ratio=0.25)).eval()
    path = export_onnx(pruned, tmp_path / "enc.onnx", seq_len=12, with_token_type_ids=True)
    batch = make_batch(2, 20, lengths=[20, 4], seed=4)
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    check_onnx_parity(pruned, path, batch, atol=1e-5, rtol=1e-4)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden, kept = sess.run(None, {k: v.numpy() for k, v in batch.items()})
    assert hidden.shape == (2, 5, 32)  # ceil(0.25 * 20) computed in the graph from the input length
    assert kept.sum(1).tolist() == [5, 4]


def test_export_keeps_ceil_of_ratio_times_length(tmp_path):
    """k = ceil(keep_ratio * N) in the graph too, when keep_ratio * N is not an integer (the traced
    `//` becomes ONNX integer Div, which truncates: k was once floor(keep_ratio * N) in ONNX)."""
    pruned = apply_token_pruning(tiny_encoder(2), TokenPruningConfig(layer=1, keep_ratio=0.3)).eval()
    path = export_onnx(pruned, tmp_path / "r03.onnx", seq_len=16)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (16, 9, 4, 3, 2, 1):
        batch = make_batch(2, n, lengths=[n, max(1, n // 2)], seed=n)
        check_onnx_parity(pruned, path, batch, atol=1e-5, rtol=1e-4)
        hidden, kept = sess.run(None, {k: v.numpy() for k, v in batch.items()})
        assert hidden.shape[1] == pruned.pruning_config.num_kept(n) == -(-3 * n // 10)


def test_fixed_k_export_clips_k_to_short_inputs(tmp_path):
    pruned = apply_token_pruning(tiny_classifier(4), TokenPruningConfig(layer=1, k=6)).eval()
    path = export_onnx(pruned, tmp_path / "k6.onnx", seq_len=12)
    # longer than traced, shorter than k (k clipped to N in the graph), padded rows
    for batch in (make_batch(3, 20, lengths=[20, 4, 9], seed=2), make_batch(2, 4, seed=3)):
        check_onnx_parity(pruned, path, batch, atol=1e-5, rtol=1e-4)


def test_head_pruned_export_parity(tmp_path):
    model = tiny_classifier(2)
    prune_heads(model, {0: [0, 1], 3: [2]})
    path = export_onnx(model, tmp_path / "ahp.onnx", seq_len=10)
    check_onnx_parity(model, path, make_batch(3, 14, lengths=[14, 6, 14], seed=5), atol=1e-5, rtol=1e-4)


def test_export_rejects_bad_arguments(tmp_path):
    with pytest.raises(EdgekdValueError, match="model"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(EdgekdValueError, match="seq_len"):
        export_onnx(tiny_classifier(), tmp_path / "x.onnx", seq_len=1000)
    with pytest.raises(EdgekdValueError, match="directory"):
        export_onnx(tiny_classifier(), tmp_path / "missing" / "x.onnx")


def _run(path, batch):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v.numpy() for k, v in batch.items() if k in names})[0]


def test_dynamic_and_static_int8(pruned_classifier_onnx, tmp_path):
    _, fp32 = pruned_classifier_onnx
    batch = make_batch(4, 16, lengths=[16, 10, 16, 7], seed=6)
    ref = _run(fp32, batch)

    dyn = quantize_dynamic(fp32, tmp_path / "dyn.onnx")
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & _op_types(dyn) or "DynamicQuantizeMatMul" in _op_types(dyn)
    assert dyn.stat().st_size < fp32.stat().st_size
    out = _run(dyn, batch)
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert np.abs(out - ref).max() < 0.25  # int8 error on a tiny random model

    calib = [{k: v.numpy() for k, v in make_batch(4, 16, seed=s).items()} for s in range(3)]
    sta = quantize_static(fp32, tmp_path / "static.onnx", calib, method="minmax")
    ops = _op_types(sta)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    out = _run(sta, batch)
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert np.abs(out - ref).max() < 0.25


def test_quantize_rejects_bad_arguments(pruned_classifier_onnx, tmp_path):
    _, fp32 = pruned_classifier_onnx
    with pytest.raises(EdgekdValueError, match="does not exist"):
        quantize_dynamic(tmp_path / "nope.onnx", tmp_path / "o.onnx")
    with pytest.raises(EdgekdValueError, match="different path"):
        quantize_dynamic(fp32, fp32)
    with pytest.raises(EdgekdValueError, match="weight_type"):
        quantize_dynamic(fp32, tmp_path / "o.onnx", weight_type="int4")
    with pytest.raises(EdgekdValueError, match="method"):
        quantize_static(fp32, tmp_path / "o.onnx", [], method="kl")
    with pytest.raises(EdgekdValueError, match="empty"):
        quantize_static(fp32, tmp_path / "o.onnx", [])
    with pytest.raises(EdgekdValueError, match="missing"):
        quantize_static(fp32, tmp_path / "o.onnx", [{"input_ids": np.ones((1, 4), np.int64)}])


@pytest.mark.slow
def test_token_pruned_dynamo_export_parity(tmp_path):
    """The torch.export based exporter gives the same graph semantics (slow: tracing takes ~40 s)."""
    model = tiny_classifier(3, num_hidden_layers=2)
    pruned = apply_token_pruning(model, TokenPruningConfig(layer=1, keep_ratio=0.5)).eval()
    path = export_onnx(pruned, tmp_path / "dynamo.onnx", seq_len=16, dynamo=True)
    assert "TopK" in _op_types(path)
    for batch in (make_batch(2, 16, seed=7), make_batch(3, 27, lengths=[27, 12, 4], seed=8)):
        check_onnx_parity(pruned, path, batch)  # fp32 tolerance 1e-4 (onnxscript fuses ops)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("heads", [None, {0: [0, 1], 3: [2]}])
def test_direct_bert_classifier_equals_the_model(attn, heads):
    # the export path of plain / head-pruned classifiers: layer by layer with a (B, 1, 1, S) mask
    from edgekd.prune.export import DirectBertClassifier

    model = tiny_classifier(4, attn=attn)
    if heads:
        prune_heads(model, heads)
    batch = make_batch(4, 13, lengths=[13, 5, 1, 9], seed=2)
    with torch.no_grad():
        ref = model(**batch).logits
        got = DirectBertClassifier(model)(batch["input_ids"], batch["attention_mask"])
        tt = torch.zeros_like(batch["input_ids"])
        got_tt = DirectBertClassifier(model)(batch["input_ids"], batch["attention_mask"], tt)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_tt, ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(EdgekdValueError, match="BertForSequenceClassification"):
        DirectBertClassifier(tiny_encoder())
