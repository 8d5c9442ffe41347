"""Attention-head pruning (AHP) of BERT-family models, after Michel, Levy and Neubig (NeurIPS 2019),
"Are Sixteen Heads Really Better than One?".

1. :func:`head_importance`: the importance of head h of layer l is the expected absolute gradient
   of the loss with respect to a mask variable ``xi[l, h]`` that multiplies the head's output,
   ``I[l, h] = E |dL/dxi[l, h]|`` at ``xi = 1``, accumulated over a dev set (per batch, as the
   authors' code), then normalised per layer by its L2 norm (the paper's section 4.3).
   transformers 5.x dropped the ``head_mask`` argument, so the mask is applied by forward hooks on
   every ``BertSelfAttention``: the context output (B, S, H * d) is viewed as (B, S, H, d) and scaled
   by ``xi[l]``. That is exactly what the old ``head_mask`` did (the mask multiplied the attention
   probabilities, and ``(m * P) V = m * (P V)``).
2. :func:`prune_heads`: physically removes heads: the rows of the query / key / value projections
   and the input columns of the attention output projection that belong to them are sliced away,
   so the layers compute with fewer heads. transformers 5.x has no ``prune_heads`` any more; the
   removed heads are recorded (original head numbers) in the Hugging Face config as
   ``edgekd_pruned_heads`` and :func:`load_head_pruned_model` rebuilds the smaller architecture
   from it before loading the weights.
3. :func:`prune_least_important_heads`: AHP-n, removes the n heads of lowest importance (never the
   last head of a layer: a layer keeps at least one head).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from edgekd.errors import EdgekdValueError

__all__ = [
    "head_importance",
    "prune_heads",
    "prune_least_important_heads",
    "pruned_heads",
    "remaining_heads",
    "load_head_pruned_model",
    "PRUNED_HEADS_KEY",
]

PRUNED_HEADS_KEY = "edgekd_pruned_heads"


def _supported_classes() -> dict[str, type]:
    from transformers import BertForSequenceClassification, BertModel

    return {"BertModel": BertModel, "BertForSequenceClassification": BertForSequenceClassification}


def _check_model(model: Any) -> nn.Module:
    classes = _supported_classes()
    arch = type(model).__name__
    if arch not in classes or not isinstance(model, classes[arch]):
        raise EdgekdValueError(
            f"model must be a transformers BertModel or BertForSequenceClassification, got {type(model).__name__}"
        )
    return model


def _bert(model: nn.Module) -> nn.Module:
    return model if type(model).__name__ == "BertModel" else model.bert


def pruned_heads(model: nn.Module) -> dict[int, list[int]]:
    """Heads removed so far, by layer, in the original head numbering."""
    _check_model(model)
    raw = getattr(model.config, PRUNED_HEADS_KEY, None) or {}
    return {int(layer): sorted(int(h) for h in heads) for layer, heads in raw.items()}


def remaining_heads(model: nn.Module) -> list[list[int]]:
    """For every layer, the original numbers of the heads still present, in weight order."""
    n_heads = model.config.num_attention_heads
    removed = pruned_heads(model)
    n_layers = model.config.num_hidden_layers
    return [[h for h in range(n_heads) if h not in removed.get(layer, [])] for layer in range(n_layers)]


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0: output rows, 1: input columns)."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = None
    if linear.bias is not None:
        bias = linear.bias.detach().clone() if dim == 1 else linear.bias.detach()[index].clone()
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def _remove_heads_structurally(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> None:
    """Slice the weights of the given heads (original numbers) out of the model in place."""
    present = remaining_heads(model)
    layers = _bert(model).encoder.layer
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    for layer_idx, drop in heads.items():
        drop = set(drop)
        if not drop:
            continue
        keep_heads = [i for i, h in enumerate(present[layer_idx]) if h not in drop]
        attention = layers[layer_idx].attention
        index = torch.cat(
            [torch.arange(i * head_dim, (i + 1) * head_dim) for i in keep_heads]
        ).to(attention.self.query.weight.device)
        sa = attention.self
        sa.query = _slice_linear(sa.query, index, 0)
        sa.key = _slice_linear(sa.key, index, 0)
        sa.value = _slice_linear(sa.value, index, 0)
        attention.output.dense = _slice_linear(attention.output.dense, index, 1)
        sa.num_attention_heads = len(keep_heads)
        sa.all_head_size = len(keep_heads) * head_dim


def _validate_heads(model: nn.Module, heads: Any) -> dict[int, list[int]]:
    if not isinstance(heads, Mapping):
        raise EdgekdValueError(f"heads must be a mapping layer -> list of head numbers, got {type(heads).__name__}")
    n_layers = model.config.num_hidden_layers
    n_heads = model.config.num_attention_heads
    present = remaining_heads(model)
    out: dict[int, list[int]] = {}
    for layer, hs in heads.items():
        try:
            layer_i = int(layer)
        except (TypeError, ValueError):
            raise EdgekdValueError(f"heads: layer keys must be ints, got {layer!r}") from None
        if not 0 <= layer_i < n_layers:
            raise EdgekdValueError(f"heads: layer {layer_i} out of range [0, {n_layers})")
        hs_list = list(hs)
        for h in hs_list:
            if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < n_heads:
                raise EdgekdValueError(f"heads: head {h!r} of layer {layer_i} is not an int in [0, {n_heads})")
            if h not in present[layer_i]:
                raise EdgekdValueError(f"heads: head {h} of layer {layer_i} was already pruned")
        drop = sorted(set(hs_list))
        if len(drop) >= len(present[layer_i]):
            raise EdgekdValueError(
                f"heads: pruning {drop} would remove every remaining head of layer {layer_i}; keep at least one"
            )
        if drop:
            out[layer_i] = drop
    return out


def prune_heads(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove attention heads in place: ``heads`` maps a layer to original head numbers.

    The projections are physically sliced (the model gets smaller and faster); the removed heads
    are recorded in ``model.config.edgekd_pruned_heads`` so that ``model.save_pretrained(dir)``
    followed by :func:`load_head_pruned_model` rebuilds the smaller architecture. Returns ``model``.
    """
    _check_model(model)
    heads = _validate_heads(model, heads)
    _remove_heads_structurally(model, heads)
    record = pruned_heads(model)
    for layer, hs in heads.items():
        record[layer] = sorted(set(record.get(layer, [])) | set(hs))
    setattr(model.config, PRUNED_HEADS_KEY, {str(k): v for k, v in sorted(record.items())})
    return model


def head_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    loss_fn: Callable[[Any, Mapping[str, torch.Tensor]], torch.Tensor] | None = None,
    normalize_layers: bool = True,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Michel et al. head importance on a dev set.

    Args:
        model: a ``BertForSequenceClassification`` (or ``BertModel`` with ``loss_fn``), possibly
            already head-pruned.
        batches: dicts of model inputs (``input_ids``, ``attention_mask``, ... and ``labels``).
        loss_fn: ``loss_fn(outputs, batch) -> scalar``; default: ``outputs.loss`` (needs labels).
        normalize_layers: divide each layer's scores by their L2 norm (Michel et al. 4.3).
        progress: show a tqdm bar.

    Returns:
        one float tensor per layer with the importance of each *remaining* head, in weight order
        (see :func:`remaining_heads` for the original head numbers).
    """
    _check_model(model)
    layers = _bert(model).encoder.layer
    device = next(model.parameters()).device
    present = remaining_heads(model)
    masks = [torch.ones(len(h), device=device, requires_grad=True) for h in present]
    totals = [torch.zeros(len(h), device=device) for h in present]

    def make_hook(mask: torch.Tensor):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            context, weights = output
            shape = context.shape
            scaled = context.view(*shape[:-1], mask.numel(), -1) * mask.view(1, 1, -1, 1).to(context.dtype)
            return scaled.view(shape), weights

        return hook

    handles = [layer.attention.self.register_forward_hook(make_hook(m)) for layer, m in zip(layers, masks)]
    was_training = model.training
    model.eval()  # dropout off: importance of the deterministic model
    grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    n_batches = 0
    try:
        iterator: Iterable = batches
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc="head importance", unit="batch")
        for batch in iterator:
            if not isinstance(batch, Mapping):
                raise EdgekdValueError(f"batches must yield dicts of tensors, got {type(batch).__name__}")
            out = model(**batch)
            if loss_fn is None:
                if getattr(out, "loss", None) is None:
                    raise EdgekdValueError("the model returned no loss: give labels in the batches or a loss_fn")
                loss = out.loss
            else:
                loss = loss_fn(out, batch)
            grads = torch.autograd.grad(loss, masks)
            for total, g in zip(totals, grads):
                total += g.abs().detach()
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(grad_flags[n])
        model.train(was_training)
    if n_batches == 0:
        raise EdgekdValueError("batches is empty: head importance needs at least one dev batch")
    scores = [t / n_batches for t in totals]
    if normalize_layers:
        scores = [s / s.norm(p=2).clamp_min(1e-20) for s in scores]
    return [s.cpu() for s in scores]


def prune_least_important_heads(
    model: nn.Module, n: int, importance: list[torch.Tensor]
) -> dict[int, list[int]]:
    """AHP-n: remove the ``n`` heads of lowest importance (as from :func:`head_importance` on this
    model), never the last head of a layer. Returns the heads removed (original numbers)."""
    _check_model(model)
    present = remaining_heads(model)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise EdgekdValueError(f"n must be an int >= 0, got {n!r}")
    if not isinstance(importance, (list, tuple)) or len(importance) != len(present):
        raise EdgekdValueError(f"importance must be a list of {len(present)} per-layer tensors")
    for layer, (imp, hs) in enumerate(zip(importance, present)):
        if not isinstance(imp, torch.Tensor) or imp.shape != (len(hs),):
            raise EdgekdValueError(
                f"importance[{layer}] must be a tensor of shape ({len(hs)},) (remaining heads of the layer)"
            )
    capacity = sum(len(h) - 1 for h in present)
    if n > capacity:
        raise EdgekdValueError(f"n={n} exceeds the {capacity} heads that can go while every layer keeps one")
    ranked = sorted(
        ((float(imp[i]), layer, head) for layer, (imp, hs) in enumerate(zip(importance, present)) for i, head in enumerate(hs)),
        key=lambda t: (t[0], t[1], t[2]),
    )
    left = {layer: len(hs) for layer, hs in enumerate(present)}
    chosen: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if len([h for hs in chosen.values() for h in hs]) == n:
            break
        if left[layer] <= 1:
            continue
        chosen.setdefault(layer, []).append(head)
        left[layer] -= 1
    prune_heads(model, chosen)
    return {k: sorted(v) for k, v in sorted(chosen.items())}


def load_head_pruned_model(directory: str | pathlib.Path, attn_implementation: str | None = None) -> nn.Module:
    """Reload a head-pruned model saved with ``model.save_pretrained(directory)``.

    Reads ``config.json`` (the removed heads are under ``edgekd_pruned_heads``), builds the
    architecture it names, removes the heads so the shapes are the smaller ones, then loads
    ``model.safetensors`` strictly. Returns the model in eval mode.
    """
    from safetensors.torch import load_file
    from transformers import BertConfig

    path = pathlib.Path(directory)
    cfg_path = path / "config.json"
    weights = path / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise EdgekdValueError(f"{str(path)!r} must hold config.json and model.safetensors")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekdValueError(f"{cfg_path} is not valid JSON: {exc}") from exc
    archs = raw.get("architectures") or []
    classes = _supported_classes()
    if len(archs) != 1 or archs[0] not in classes:
        raise EdgekdValueError(f"{cfg_path}: architectures must be one of {sorted(classes)}, got {archs!r}")
    config = BertConfig.from_pretrained(str(path))
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    heads = {int(k): list(v) for k, v in (getattr(config, PRUNED_HEADS_KEY, None) or {}).items()}
    setattr(config, PRUNED_HEADS_KEY, {})
    model = classes[archs[0]](config)
    if heads:
        prune_heads(model, heads)
    state = load_file(str(weights))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EdgekdValueError(f"{weights} does not match the pruned architecture: {exc}") from exc
    return model.eval()
