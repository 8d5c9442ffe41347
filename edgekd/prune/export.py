"""ONNX export of token-pruned, head-pruned and plain BERT models (fp32).

:func:`export_onnx` exports a :class:`~edgekd.prune.tokens.TokenPrunedModel` in its eval (hard
top-k) form, or a plain / head-pruned Hugging Face ``BertModel`` / ``BertForSequenceClassification``,
with dynamic batch and sequence axes. The token-pruned graph computes ``k`` from the input length
and selects with ``TopK`` + ``Gather``, exactly as the PyTorch eval path. :func:`check_onnx_parity`
runs the file in onnxruntime and compares it with PyTorch.

Graph interface (the same for every model kind, so the bench harness can swap them):
inputs ``input_ids`` (int64 B x N), ``attention_mask`` (int64 B x N), and ``token_type_ids``
when ``with_token_type_ids``; outputs ``logits`` (B x C) for sequence classifiers, or
``last_hidden_state`` (B x k x D) and ``kept_mask`` (B x k) for encoders.
"""
from __future__ import annotations

import pathlib
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.errors import EdgekdValueError
from edgekd.prune.tokens import TokenPrunedModel

__all__ = ["export_onnx", "check_onnx_parity", "onnx_output_names", "min_seq_len", "DirectBertClassifier"]


class DirectBertClassifier(nn.Module):
    """A (plain or head-pruned) ``BertForSequenceClassification`` run layer by layer with a
    (B, 1, 1, S) additive attention mask: the same logits as ``model(...)`` (the path
    :class:`~edgekd.prune.tokens.TokenPrunedModel` takes), for export.

    transformers 5 builds the attention mask inside ``BertModel.forward`` as a (B, 1, N, N) tensor;
    an exported graph materializes that and adds it in every layer. At batch 32 x 512 tokens the
    ONNX Runtime graph of the plain forward measured 1.6x slower than this one (MiniLM-L6, 2-core
    Xeon, identical logits), which also made token pruning look faster than it is.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if type(model).__name__ != "BertForSequenceClassification":
            raise EdgekdValueError(f"DirectBertClassifier needs a BertForSequenceClassification, got {type(model).__name__}")
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        from edgekd.prune.tokens import _additive_mask

        bert = self.model.bert
        hidden = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        bias = _additive_mask(attention_mask.long(), hidden.dtype)
        for layer in bert.encoder.layer:
            hidden = layer(hidden, bias)
        pooled = bert.pooler(hidden) if bert.pooler is not None else hidden[:, 0]
        return self.model.classifier(self.model.dropout(pooled))


class _ExportWrapper(nn.Module):
    def __init__(self, model: nn.Module, with_token_type_ids: bool) -> None:
        super().__init__()
        self.model = model
        self.with_token_type_ids = with_token_type_ids
        inner = model.model if isinstance(model, TokenPrunedModel) else model
        self.classifier = type(inner).__name__ == "BertForSequenceClassification"

        # plain / head-pruned classifiers: layer by layer with a (B, 1, 1, S) mask (see DirectBertClassifier)
        self.direct = DirectBertClassifier(model) if type(model).__name__ == "BertForSequenceClassification" else None

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        if self.direct is not None:
            return self.direct(input_ids, attention_mask, token_type_ids if self.with_token_type_ids else None)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.with_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs)
        if self.classifier:
            return out.logits
        if isinstance(self.model, TokenPrunedModel):
            return out.last_hidden_state, out.kept_mask
        return out.last_hidden_state, attention_mask


def onnx_output_names(model: nn.Module) -> list[str]:
    inner = model.model if isinstance(model, TokenPrunedModel) else model
    if type(inner).__name__ == "BertForSequenceClassification":
        return ["logits"]
    return ["last_hidden_state", "kept_mask"]


def _check_model(model: Any) -> None:
    if isinstance(model, TokenPrunedModel):
        return
    name = type(model).__name__
    if name not in ("BertModel", "BertForSequenceClassification"):
        raise EdgekdValueError(
            f"model must be a TokenPrunedModel, BertModel or BertForSequenceClassification, got {name}"
        )


def _min_seq_len(model: nn.Module) -> int:
    """Shortest sequence the exported graph must accept with k - 1 >= 1 kept non-[CLS] tokens."""
    if not isinstance(model, TokenPrunedModel):
        return 2
    return _min_seq_len_for_config(model.pruning_config)


def _min_seq_len_for_config(cfg: Any) -> int:
    """:func:`_min_seq_len` of a model pruned with the :class:`TokenPruningConfig` ``cfg``."""
    n = 2
    while cfg.num_kept(n) < 2 and n < 4096:
        n += 1
    return n


def min_seq_len(model: Any) -> int:
    """The shortest padded sequence length :func:`export_onnx` declares for ``model`` (a model or a
    :class:`~edgekd.prune.tokens.TokenPruningConfig`): for token pruning the smallest ``N`` at which
    ``k >= 2`` (a token besides [CLS] is kept), else 2. ``edgekd.compile`` bundles pad every batch
    to at least this length."""
    from edgekd.prune.tokens import TokenPruningConfig

    if isinstance(model, TokenPruningConfig):
        return _min_seq_len_for_config(model)
    return _min_seq_len(model)


def export_onnx(
    model: nn.Module,
    path: str | pathlib.Path,
    *,
    seq_len: int = 32,
    batch_size: int = 2,
    opset: int = 18,
    with_token_type_ids: bool = False,
    max_seq_len: int | None = None,
    dynamo: bool = False,
) -> pathlib.Path:
    """Export ``model`` (eval mode, fp32) to ``path`` with dynamic batch and sequence axes.

    Args:
        seq_len, batch_size: shape of the example inputs used for tracing.
        opset: ONNX opset (>= 18).
        with_token_type_ids: add a ``token_type_ids`` input (segment ids; default all zeros).
        max_seq_len: upper bound of the dynamic sequence axis (default: the model's
            ``max_position_embeddings``; used by the dynamo exporter).
        dynamo: use the ``torch.export`` based exporter instead of the TorchScript one. Both give
            the same graph semantics (k computed from the input length, TopK + Gather); the
            TorchScript exporter (default, as ``edgekd.compile``) is about 20x faster to run.
    """
    _check_model(model)
    hf_config = model.config
    max_len = int(max_seq_len or hf_config.max_position_embeddings)
    min_len = _min_seq_len(model)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not min_len <= seq_len <= max_len:
        raise EdgekdValueError(f"seq_len must be an int in [{min_len}, {max_len}], got {seq_len!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EdgekdValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 18:
        raise EdgekdValueError(f"opset must be an int >= 18, got {opset!r}")
    out_path = pathlib.Path(path)
    if not out_path.parent.is_dir():
        raise EdgekdValueError(f"output directory {str(out_path.parent)!r} does not exist")

    was_training = model.training
    model.eval()
    wrapper = _ExportWrapper(model, with_token_type_ids).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, hf_config.vocab_size, (batch_size, seq_len), generator=g)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    args: tuple = (ids, mask)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=min_len, max=max_len)
    dynamic: dict[str, Any] = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    input_names = ["input_ids", "attention_mask"]
    if with_token_type_ids:
        args = args + (torch.zeros_like(ids),)
        dynamic["token_type_ids"] = {0: batch, 1: seq}
        input_names.append("token_type_ids")
    try:
        with torch.no_grad():
            if dynamo:
                program = torch.onnx.export(
                    wrapper,
                    args,
                    dynamic_shapes=dynamic,
                    input_names=input_names,
                    output_names=onnx_output_names(model),
                    opset_version=opset,
                    dynamo=True,
                    optimize=True,
                    verbose=False,
                )
                program.save(str(out_path))
            else:
                axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
                outputs = onnx_output_names(model)
                axes[outputs[0]] = {0: "batch"} if outputs == ["logits"] else {0: "batch", 1: "kept"}
                if len(outputs) == 2:
                    axes[outputs[1]] = {0: "batch", 1: "kept"}
                with warnings.catch_warnings():
                    # tracer notes on Python-side shape checks, and the exporter's deprecation note
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        wrapper,
                        args,
                        str(out_path),
                        input_names=input_names,
                        output_names=outputs,
                        dynamic_axes=axes,
                        opset_version=opset,
                        do_constant_folding=True,
                        dynamo=False,
                    )
    finally:
        model.train(was_training)
    return out_path


def check_onnx_parity(
    model: nn.Module,
    path: str | pathlib.Path,
    inputs: dict[str, torch.Tensor],
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> float:
    """Run ``path`` in onnxruntime (CPU) and ``model`` in PyTorch (eval) on ``inputs``; return the
    largest absolute difference of the float outputs (masked slots excluded for encoders).

    Raises :class:`EdgekdValueError` when it exceeds ``atol + rtol * |reference|`` or the kept
    masks differ.
    """
    import onnxruntime as ort

    _check_model(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].cpu().numpy().astype(np.int64) for i in sess.get_inputs()}
    got = sess.run(None, feed)
    model.eval()
    wrapper = _ExportWrapper(model, "token_type_ids" in feed)
    with torch.no_grad():
        args = [inputs["input_ids"], inputs["attention_mask"]]
        if "token_type_ids" in feed:
            args.append(inputs["token_type_ids"])
        ref = wrapper(*args)
    if isinstance(ref, torch.Tensor):
        ref_np, got_np, valid = ref.numpy(), got[0], None
    else:
        ref_np, got_np = ref[0].numpy(), got[0]
        ref_mask, got_mask = ref[1].numpy(), got[1]
        if ref_mask.shape != got_mask.shape or not np.array_equal(ref_mask, got_mask):
            raise EdgekdValueError("ONNX parity: the kept-token masks differ between PyTorch and onnxruntime")
        valid = ref_mask.astype(bool)
    if ref_np.shape != got_np.shape:
        raise EdgekdValueError(f"ONNX parity: output shape {got_np.shape} != PyTorch {ref_np.shape}")
    diff = np.abs(ref_np - got_np)
    tol = atol + rtol * np.abs(ref_np)
    if valid is not None:
        diff, tol = diff[valid], tol[valid]
    if diff.size and bool((diff > tol).any()):
        raise EdgekdValueError(f"ONNX parity failed: max abs difference {float(diff.max()):.3g}")
    return float(diff.max()) if diff.size else 0.0
