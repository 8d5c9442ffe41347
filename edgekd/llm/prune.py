"""Students made from the teacher by structured pruning (llama-architecture causal LMs).

Depth (which decoder blocks to keep):

- :func:`block_influence` (ShortGPT, Men et al. 2024): ``BI_i = 1 - E[cos(h_in, h_out)]`` of block ``i``
  over the valid tokens of a calibration set; a block that barely turns its input is unimportant.
- :func:`layer_drop_importance` (Minitron's depth criterion, Sreenivas et al. 2024): the increase of
  the calibration loss (log perplexity) when block ``i`` alone is skipped.
- :func:`evenly_spaced_layers`: the baseline, layers ``round(linspace(0, L-1, keep))``.

:func:`select_layers` keeps the ``keep`` most important blocks in their original order and
:func:`prune_depth` builds the smaller model.

Width (Minitron / LLM-Pruner activation importance, :func:`width_importance`):

- MLP channels: the mean absolute activation entering ``down_proj`` (``act(gate) * up``) over the
  valid calibration tokens; each layer keeps its ``intermediate_size`` strongest channels.
- Attention heads: the L2 norm of each query head's output entering ``o_proj``, averaged over the
  valid tokens. Grouped-query attention is kept consistent by pruning whole KV groups: a group's
  importance is the sum of its query heads', and a kept group keeps its K/V head and all its query heads.

:func:`prune_width` builds the smaller model (``intermediate_size``, ``num_attention_heads``,
``num_key_value_heads`` in its config; ``head_dim`` unchanged). Every pruned model is a fresh
model built from the new config with the sliced weights, so it saves with
:func:`edgekd.llm.save_causal_lm` and reloads as the smaller architecture with identical logits.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

import torch

from edgekd.errors import EdgekdValueError

__all__ = ["SUPPORTED", "calibration_batches", "block_influence", "layer_drop_importance", "evenly_spaced_layers",
           "select_layers", "prune_depth", "width_importance", "prune_width"]

SUPPORTED = ("llama",)  # model_type values whose decoder layout the slicing below knows


def _check_arch(model: torch.nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED:
        raise EdgekdValueError(f"structured pruning supports model_type {SUPPORTED}, got {mt!r}")
    if getattr(cfg, "quantization_config", None) is not None:
        raise EdgekdValueError("structured pruning needs a plain model; make a GGUF-loaded one plain first "
                               "(edgekd.llm.plain_copy, done by load_causal_lm)")
    return cfg


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.model.layers


def calibration_batches(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Split ``input_ids`` (N, T) (and its mask) into batches for the importance functions."""
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] < 2:
        raise EdgekdValueError(f"calibration: input_ids must be (N >= 1, T >= 2), got {tuple(input_ids.shape)}")
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    return [{"input_ids": input_ids[i:i + batch_size], "attention_mask": mask[i:i + batch_size]}
            for i in range(0, input_ids.shape[0], batch_size)]


def _as_batches(batches: Iterable[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    out = [dict(b) for b in batches]
    if not out:
        raise EdgekdValueError("calibration: no batches given")
    for b in out:
        if "input_ids" not in b:
            raise EdgekdValueError("calibration: every batch needs input_ids")
        b.setdefault("attention_mask", torch.ones_like(b["input_ids"]))
    return out


def _hidden(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


@torch.no_grad()
def block_influence(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """ShortGPT block influence ``1 - mean cos(h_in, h_out)`` per decoder block, shape (L,), over
    the tokens whose attention mask is 1. Higher = more important."""
    _check_arch(model)
    layers = _layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    state: dict[str, torch.Tensor] = {}

    def hook(i):
        def fn(mod, args, kwargs, out):
            h_in = _hidden(args[0] if args else kwargs["hidden_states"]).double()
            h_out = _hidden(out).double()
            cos = torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1)
            sums[i] += (cos * state["mask"]).sum().cpu()
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    count = _run_hooked(model, batches, handles, state)
    return (1.0 - sums / count).float()


def _run_hooked(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], handles: list,
                state: dict) -> int:
    """Run the calibration batches in eval mode with ``state["mask"]`` set for the hooks; remove the
    hooks; return the number of valid tokens (at least 1)."""
    was, count = model.training, 0
    model.eval()
    try:
        for b in _as_batches(batches):
            state["mask"] = b["attention_mask"].to(_device(model)).double()
            count += int(b["attention_mask"].sum())
            model(**_to(b, model), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return max(count, 1)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(b: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    d = _device(model)
    return {k: v.to(d) for k, v in b.items() if k in ("input_ids", "attention_mask")}


@torch.no_grad()
def _mean_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    total, n = 0.0, 0
    for b in batches:
        bb = _to(b, model)
        logits = model(**bb, use_cache=False).logits[:, :-1].double()
        tgt = bb["input_ids"][:, 1:]
        m = bb["attention_mask"][:, 1:].bool() & bb["attention_mask"][:, :-1].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
        total += float(nll[m].sum())
        n += int(m.sum())
    if n == 0:
        raise EdgekdValueError("calibration: no valid tokens (every sequence is shorter than 2 tokens)")
    return total / n


@torch.no_grad()
def layer_drop_importance(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """Minitron depth importance: calibration loss (mean token NLL) with block ``i`` skipped minus the
    full model's, per block (L,). Higher = more important. Costs L + 1 passes over the batches."""
    _check_arch(model)
    bs = _as_batches(batches)
    was = model.training
    model.eval()
    try:
        base = _mean_loss(model, bs)
        out = []
        for layer in _layers(model):
            h = layer.register_forward_hook(
                lambda mod, args, kwargs, o: (args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
            try:
                out.append(_mean_loss(model, bs) - base)
            finally:
                h.remove()
    finally:
        model.train(was)
    return torch.tensor(out, dtype=torch.float32)


def evenly_spaced_layers(num_layers: int, keep: int) -> list[int]:
    """``keep`` layer indices spread evenly over ``num_layers`` (first and last included when keep >= 2)."""
    _check_keep(num_layers, keep)
    if keep == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (keep - 1)) for i in range(keep)})


def _check_keep(num_layers: int, keep: int) -> None:
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= num_layers:
        raise EdgekdValueError(f"keep must be an int in [1, {num_layers}] (the model has {num_layers} layers), "
                               f"got {keep!r}")


def select_layers(importance: torch.Tensor | Sequence[float], keep: int) -> list[int]:
    """The ``keep`` most important layers, in their original order (ties: the earlier layer)."""
    imp = torch.as_tensor(importance, dtype=torch.float64)
    _check_keep(imp.numel(), keep)
    if not torch.isfinite(imp).all():
        raise EdgekdValueError("select_layers: importance holds NaN or inf")
    order = sorted(range(imp.numel()), key=lambda i: (-float(imp[i]), i))
    return sorted(order[:keep])


def _rebuild(model: torch.nn.Module, cfg: Any, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    dtype = next(model.parameters()).dtype
    new = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    missing, unexpected = new.load_state_dict(dict(state), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(cfg, "tie_word_embeddings", False))]
    if missing or unexpected:  # pragma: no cover - a slicing bug
        raise RuntimeError(f"pruned state dict mismatch: missing {missing[:4]} unexpected {unexpected[:4]}")
    if getattr(cfg, "tie_word_embeddings", False):
        new.tie_weights()
    return new.to(_device(model)).train(model.training)


def prune_depth(model: torch.nn.Module, keep: Sequence[int]) -> torch.nn.Module:
    """A new model holding only the decoder blocks ``keep`` (indices, kept in the given sorted order)."""
    cfg = _check_arch(model)
    n = len(_layers(model))
    keep = list(keep)
    if not keep or any(not isinstance(i, int) or isinstance(i, bool) for i in keep):
        raise EdgekdValueError(f"prune_depth: keep must be a non-empty list of layer indices, got {keep!r}")
    if len(set(keep)) != len(keep) or min(keep) < 0 or max(keep) >= n:
        raise EdgekdValueError(f"prune_depth: keep must be distinct indices in [0, {n}), got {keep}")
    keep = sorted(keep)
    new_cfg = copy.deepcopy(cfg)
    new_cfg.num_hidden_layers = len(keep)
    if getattr(new_cfg, "layer_types", None) is not None:
        new_cfg.layer_types = [cfg.layer_types[i] for i in keep]
    remap = {f"model.layers.{old}.": f"model.layers.{new}." for new, old in enumerate(keep)}
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.layers."):
            prefix = ".".join(k.split(".")[:3]) + "."
            if prefix not in remap:
                continue
            k = remap[prefix] + k[len(prefix):]
        state[k] = v
    return _rebuild(model, new_cfg, state)


@torch.no_grad()
def width_importance(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Activation importance per layer: ``mlp`` (L, intermediate_size) mean |act(gate)*up| and
    ``heads`` (L, num_attention_heads) mean L2 norm of each head's attention output, over valid tokens."""
    cfg = _check_arch(model)
    layers = _layers(model)
    nh = cfg.num_attention_heads
    mlp = torch.zeros(len(layers), cfg.intermediate_size, dtype=torch.float64)
    heads = torch.zeros(len(layers), nh, dtype=torch.float64)
    state: dict[str, Any] = {}

    def mlp_hook(i):
        def fn(mod, args):
            x = args[0].double().abs()  # (B, T, I)
            mlp[i] += (x * state["mask"][..., None]).sum((0, 1)).cpu()
        return fn

    def attn_hook(i):
        def fn(mod, args):
            x = args[0].double()  # (B, T, nh * head_dim)
            norms = x.view(*x.shape[:-1], nh, -1).norm(dim=-1)
            heads[i] += (norms * state["mask"][..., None]).sum((0, 1)).cpu()
        return fn

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(attn_hook(i)))
    count = _run_hooked(model, batches, handles, state)
    return {"mlp": (mlp / count).float(), "heads": (heads / count).float()}


def _topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(scores, k).indices.sort().values


def prune_width(model: torch.nn.Module, importance: Mapping[str, torch.Tensor], *,
                intermediate_size: int | None = None, num_key_value_heads: int | None = None) -> torch.nn.Module:
    """A new model keeping, in every layer, the ``intermediate_size`` most important MLP channels and
    the ``num_key_value_heads`` most important KV groups with all their query heads (None: unchanged)."""
    cfg = _check_arch(model)
    layers = _layers(model)
    inter, nkv, nh = cfg.intermediate_size, cfg.num_key_value_heads, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    new_inter = inter if intermediate_size is None else intermediate_size
    new_kv = nkv if num_key_value_heads is None else num_key_value_heads
    for name, v, hi in (("intermediate_size", new_inter, inter), ("num_key_value_heads", new_kv, nkv)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
            raise EdgekdValueError(f"prune_width: {name} must be an int in [1, {hi}], got {v!r}")
    want = {"mlp": (len(layers), inter), "heads": (len(layers), nh)}
    for k, shape in want.items():
        if k not in importance or tuple(importance[k].shape) != shape:
            got = tuple(importance[k].shape) if k in importance else None
            raise EdgekdValueError(f"prune_width: importance[{k!r}] must have shape {shape}, got {got}")
    group = nh // nkv
    state = dict(model.state_dict())
    for i in range(len(layers)):
        p = f"model.layers.{i}."
        ch = _topk_sorted(importance["mlp"][i], new_inter)
        for k in ("mlp.gate_proj", "mlp.up_proj"):
            for s in ("weight", "bias"):
                if p + k + "." + s in state:
                    state[p + k + "." + s] = state[p + k + "." + s][ch].clone()
        state[p + "mlp.down_proj.weight"] = state[p + "mlp.down_proj.weight"][:, ch].clone()
        g = _topk_sorted(importance["heads"][i].view(nkv, group).sum(1), new_kv)
        kv_rows = (g[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        q_heads = (g[:, None] * group + torch.arange(group)).reshape(-1)
        q_rows = (q_heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        for k, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            for s in ("weight", "bias"):
                key = f"{p}self_attn.{k}.{s}"
                if key in state:
                    state[key] = state[key][rows].clone()
        state[p + "self_attn.o_proj.weight"] = state[p + "self_attn.o_proj.weight"][:, q_rows].clone()
    new_cfg = copy.deepcopy(cfg)
    new_cfg.head_dim = head_dim
    new_cfg.intermediate_size = new_inter
    new_cfg.num_key_value_heads = new_kv
    new_cfg.num_attention_heads = new_kv * group
    return _rebuild(model, new_cfg, state)
