"""Optimizer and trainer state as safetensors + JSON (never pickle).

``torch.optim.Optimizer.state_dict()`` is a nested dict of tensors and plain values; tensors go
to a safetensors file under flat names ``state.<param>.<key>``, everything else to JSON.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from edgekd.errors import EdgekdValueError


def save_optimizer(opt: torch.optim.Optimizer, directory: str | os.PathLike) -> None:
    """Write ``optimizer.safetensors`` and ``optimizer.json`` into ``directory``."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                plain.setdefault(str(pid), {})[k] = v
    meta = {"param_groups": sd["param_groups"], "plain_state": plain, "type": type(opt).__name__}
    save_file(tensors, str(d / "optimizer.safetensors"))
    (d / "optimizer.json").write_text(json.dumps(meta))


def load_optimizer(opt: torch.optim.Optimizer, directory: str | os.PathLike) -> None:
    """Restore ``opt`` from :func:`save_optimizer` files."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / "optimizer.json").is_file() or not (d / "optimizer.safetensors").is_file():
        raise EdgekdValueError(f"load_optimizer: {d} holds no optimizer.json/optimizer.safetensors")
    meta = json.loads((d / "optimizer.json").read_text())
    if meta.get("type") != type(opt).__name__:
        raise EdgekdValueError(
            f"load_optimizer: checkpoint optimizer is {meta.get('type')}, this run uses {type(opt).__name__}"
        )
    tensors = load_file(str(d / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, pid, k = name.split(".", 2)
        state.setdefault(int(pid), {})[k] = t
    for pid, kv in meta["plain_state"].items():
        state.setdefault(int(pid), {}).update(kv)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Random-number-generator states (torch, numpy, python) as tensors + JSON."""
    import random

    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype("int64")),
    }
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(tensors["torch_cpu"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype("uint32"), pos, has_gauss, gauss))
    v, st, g = meta["python"]
    random.setstate((v, tuple(st), g))
