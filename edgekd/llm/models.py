"""Teachers and students as Hugging Face causal language models.

:func:`load_causal_lm` takes any of

- a model directory (``config.json`` + weights, e.g. one written by :func:`save_causal_lm`),
- a GGUF file (``*.gguf``; transformers dequantises it through ``gguf_file=``, which needs the
  ``gguf`` and ``accelerate`` packages: ``pip install 'edgekd[llm]'``),
- a hub id (``"HuggingFaceTB/SmolLM2-135M-Instruct"``; downloaded by transformers unless
  ``local_files_only``), optionally with ``gguf_file=`` naming a GGUF file of that repository,

and returns ``(model, tokenizer)`` with the model in eval mode. A model loaded from GGUF is turned
into a plain one (:func:`plain_copy`: a fresh model built from its config without
``quantization_config`` and the same state dict), because transformers refuses to save GGUF-loaded
models ("quantized with gguf and is not serializable"). :func:`save_causal_lm` writes a real model
directory (config + safetensors + tokenizer) that ``AutoModelForCausalLM.from_pretrained`` reloads
with identical outputs.

>>> from edgekd.llm import load_causal_lm, save_causal_lm      # doctest: +SKIP
>>> from edgekd.assets import asset_path
>>> teacher, tok = load_causal_lm(asset_path("smollm2"))     # SmolLM2-135M-Instruct, dequantised to fp32
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from edgekd.errors import EdgekdValueError

__all__ = ["load_causal_lm", "save_causal_lm", "plain_copy", "count_parameters", "is_gguf_model"]


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
    if dtype not in names:
        raise EdgekdValueError(f"dtype: expected one of {sorted(names)} or a torch.dtype, got {dtype!r}")
    return names[dtype]


def is_gguf_model(model: torch.nn.Module) -> bool:
    """True when ``model`` was loaded from a GGUF file (transformers will not save it)."""
    q = getattr(getattr(model, "config", None), "quantization_config", None)
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    return q is not None and "gguf" in str(method).lower()


def plain_copy(model: torch.nn.Module, *, dtype: Any | None = None) -> torch.nn.Module:
    """A fresh model of the same class built from ``model.config`` without ``quantization_config``,
    holding the same weights (all keys must match). Use it on a GGUF-loaded model before saving."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    sd = model.state_dict()
    dt = _dtype(dtype) if dtype is not None else next(iter(sd.values())).dtype
    new = AutoModelForCausalLM.from_config(cfg, dtype=dt)
    missing, unexpected = new.load_state_dict(sd, strict=False)
    tied = set(getattr(new, "_tied_weights_keys", None) or ())
    if isinstance(getattr(new, "_tied_weights_keys", None), dict):
        tied = set(new._tied_weights_keys)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise EdgekdValueError(f"plain_copy: state dict does not match the config's model "
                               f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if getattr(cfg, "tie_word_embeddings", False):
        new.tie_weights()
    return new.eval()


def _tokenizer(where: str, **kw):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(where, **kw)
    except Exception as exc:  # transformers raises OSError / ValueError / TypeError depending on what is missing
        raise EdgekdValueError(f"model: cannot load a tokenizer from {where} ({type(exc).__name__}: {exc})") from None


def load_causal_lm(source: str | os.PathLike, *, gguf_file: str | None = None, dtype: Any = torch.float32,
                   device: str | torch.device = "cpu", local_files_only: bool = False,
                   revision: str | None = None, tokenizer: bool = True):
    """Load a causal LM and its tokenizer from a directory, a GGUF file or a hub id (see the module doc).

    Returns ``(model, tokenizer)`` (``tokenizer`` is None when ``tokenizer=False``); the model is in
    eval mode on ``device``. GGUF weights are dequantised to ``dtype`` and the model made plain."""
    from transformers import AutoModelForCausalLM

    dtype = _dtype(dtype)
    src = os.fspath(source)
    path = Path(src).expanduser()
    kw: dict[str, Any] = {}
    if path.is_file():
        if path.suffix.lower() != ".gguf" or gguf_file is not None:
            raise EdgekdValueError(f"model: {path} is a file but not a .gguf file; give a model directory, "
                                   "a .gguf file or a hub id")
        where, kw["gguf_file"] = str(path.parent), path.name
    elif path.is_dir():
        if gguf_file is not None:
            kw["gguf_file"] = gguf_file
        elif not (path / "config.json").is_file():
            raise EdgekdValueError(f"model: {path} has no config.json (not a Hugging Face model directory)")
        where = str(path)
    elif src.count("/") > 1 or src.startswith((".", "/", "~")) or src.lower().endswith(".gguf"):
        raise EdgekdValueError(f"model: {src} does not exist (expected a model directory, a .gguf file or a hub id)")
    else:  # a hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct"
        where = src
        if gguf_file is not None:
            kw["gguf_file"] = gguf_file
    kw.update(local_files_only=local_files_only, revision=revision)
    if "gguf_file" in kw:
        try:
            import accelerate  # noqa: F401
            import gguf  # noqa: F401
        except ImportError as exc:
            raise EdgekdValueError(f"model: loading a GGUF file needs the gguf and accelerate packages "
                                   f"(pip install 'edgekd[llm]'): {exc}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw)
    except EdgekdValueError:
        raise
    except Exception as exc:
        raise EdgekdValueError(f"model: cannot load a causal LM from {src} ({type(exc).__name__}: {exc})") from None
    if "gguf_file" in kw:
        model = plain_copy(model, dtype=dtype)
    tok = _tokenizer(where, **kw) if tokenizer else None
    if tok is not None and tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


def save_causal_lm(model: torch.nn.Module, out: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write ``model`` (and ``tokenizer``) as a Hugging Face directory: config.json + model.safetensors
    (+ tokenizer files). GGUF-loaded models are made plain first. Returns the directory."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    if is_gguf_model(model):
        model = plain_copy(model)
    model.save_pretrained(str(d), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(d))
    return d


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n
