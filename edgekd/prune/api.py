"""Python entry points of :mod:`edgekd.prune` (``edgekd prune tokens|heads`` call these).

- :func:`train_token_pruned`: equip a BERT-family sequence classifier (a model directory or a
  ``BertForSequenceClassification`` + tokenizer) with token pruning after ``layer``
  (:func:`~edgekd.prune.tokens.apply_token_pruning`), fine-tune it end to end on the task loss with
  the sigma schedule on the shared loop (:func:`edgekd.training.train_loop`), evaluate the hard
  top-k model on ``dev``, and optionally save it (``save_pretrained`` + tokenizer + ``metrics.json``).
- :func:`prune_heads_by_importance`: Michel et al. head importance on ``dev`` and physical removal
  of the ``num_heads`` (or ``fraction``) least important heads (:mod:`edgekd.prune.heads`).

Both return a :class:`PruneResult` (model, tokenizer, metrics). Errors name the argument at fault
(``model: ...``, ``layer: ...``); the CLI shows them with the flag instead.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from edgekd.data import TextDataset
from edgekd.errors import EdgekdValueError
from edgekd.settings import read_json_object
from edgekd.training import LoopConfig, LoopResult, param_groups, seed_everything, train_loop

__all__ = ["PruneResult", "train_token_pruned", "prune_heads_by_importance", "evaluate_classifier",
           "read_model_config", "custom_label_names", "METRICS_NAME"]

METRICS_NAME = "metrics.json"


@dataclass
class PruneResult:
    """A pruned model (eval mode), its tokenizer, the metrics (as in ``metrics.json``) and, for
    token pruning, what the training loop did."""

    model: Any
    tokenizer: Any
    metrics: dict
    loop: LoopResult | None = None

    def save(self, out: str | pathlib.Path) -> pathlib.Path:
        """Write the model (``save_pretrained``), the tokenizer and ``metrics.json`` to ``out``."""
        path = pathlib.Path(out)
        self.metrics["out"] = str(path)
        self.model.save_pretrained(path if hasattr(self.model, "pruning_config") else str(path))
        self.tokenizer.save_pretrained(str(path))
        (path / METRICS_NAME).write_text(json.dumps(self.metrics, indent=2) + "\n", encoding="utf-8")
        return path


# ------------------------------------------------------------------------------------ helpers
def read_model_config(model_dir: str | pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    """A Hugging Face model directory with safetensors weights, and its ``config.json``."""
    path = pathlib.Path(model_dir)
    if not path.is_dir():
        raise EdgekdValueError(f"model: {model_dir} is not a directory")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise EdgekdValueError(f"model: {path} holds no config.json (not a Hugging Face model directory)")
    if not (path / "model.safetensors").is_file():
        raise EdgekdValueError(f"model: {path} holds no model.safetensors (only safetensors weights are loaded)")
    return path, read_json_object(cfg_path, "model")


def custom_label_names(cfg: Mapping[str, Any]) -> list[str] | None:
    """The classifier's label names, unless they are transformers' defaults (LABEL_0, ...)."""
    id2label = cfg.get("id2label") or {}
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
    except (TypeError, ValueError):
        return None
    if not names or names == [f"LABEL_{i}" for i in range(len(names))]:
        return None
    return names


def _num_labels(cfg: Mapping[str, Any]) -> int:
    return len(cfg.get("id2label") or {}) or int(cfg.get("num_labels", 2))


def _load_tokenizer(path: pathlib.Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True, local_files_only=True)
    except Exception as exc:  # transformers raises OSError / ValueError / TypeError depending on what is missing
        raise EdgekdValueError(f"model: cannot load a tokenizer from {path} ({type(exc).__name__}: {exc})") from None
    if not getattr(tok, "is_fast", False):
        raise EdgekdValueError(f"model: {path} has no fast tokenizer (tokenizer.json)")
    return tok


def _encode(tok, texts: Sequence[str], max_length: int, min_len: int = 1) -> dict[str, torch.Tensor]:
    """Model inputs with dynamic padding, post-padded to at least ``min_len`` (mask 0), as the bundles do."""
    enc = dict(tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
    enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    n = enc["input_ids"].shape[1]
    if n < min_len:
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        enc = {k: torch.nn.functional.pad(v, (0, min_len - n), value=pad_id if k == "input_ids" else 0)
               for k, v in enc.items()}
    return enc


def evaluate_classifier(model, tokenizer, data: TextDataset, *, batch_size: int = 32, max_length: int = 128,
                        min_len: int = 1, progress: bool = False) -> dict[str, Any]:
    """Accuracy and macro-F1 of ``model`` on ``data`` (and, for token-pruned models, the kept
    fraction of the valid tokens); the model's train/eval mode is restored afterwards."""
    import numpy as np
    from tqdm.auto import tqdm

    from edgekd.metrics import macro_f1

    was_training = model.training
    model.eval()
    preds: list[int] = []
    kept = valid = 0
    try:
        with torch.no_grad():
            for s in tqdm(range(0, len(data), batch_size), desc="evaluate", disable=not progress, unit="batch"):
                enc = _encode(tokenizer, data.texts[s:s + batch_size], max_length, min_len)
                out = model(**enc)
                preds.extend(out.logits.argmax(-1).tolist())
                if getattr(out, "kept_mask", None) is not None:
                    kept += int(out.kept_mask.sum())
                    valid += int(enc["attention_mask"].sum())
    finally:
        model.train(was_training)
    y, p = np.asarray(data.labels), np.asarray(preds)
    res: dict[str, Any] = {"n": len(data), "accuracy": float((y == p).mean()),
                           "macro_f1": macro_f1(y, p, data.num_classes)}
    if valid:
        res["kept_token_fraction"] = kept / valid
    return res


def _check_data(data: Any, name: str) -> TextDataset:
    if not isinstance(data, TextDataset):
        raise EdgekdValueError(f"{name}: expected an edgekd.data.TextDataset, got {type(data).__name__}")
    if len(data) == 0:
        raise EdgekdValueError(f"{name}: no rows")
    return data


def _check_module(model: Any, tokenizer: Any, what: str):
    from transformers import BertForSequenceClassification

    if not isinstance(model, BertForSequenceClassification):
        raise EdgekdValueError(f"model: {what} needs a BertForSequenceClassification (or a model directory), "
                               f"got {type(model).__name__}")
    if tokenizer is None:
        raise EdgekdValueError("tokenizer: give the model's tokenizer (only a model directory brings its own)")
    return model


# ------------------------------------------------------------------------------- token pruning
def _check_token_pruning_target(cfg: Mapping[str, Any], where: str, train: TextDataset, layer: int,
                                max_length: int, classifier: bool) -> list[str] | None:
    """Checks of a model's Hugging Face config (a dict) for token pruning; the classifier's custom
    label names (None for transformers' defaults or an encoder)."""
    if any((cfg.get("edgekd_pruned_heads") or {}).values()):
        raise EdgekdValueError(f"model: {where} is head-pruned (edgekd_pruned_heads); token pruning of head-pruned "
                               "models is not supported")
    n_layers = cfg.get("num_hidden_layers")
    if isinstance(n_layers, int) and not layer < n_layers:
        raise EdgekdValueError(f"layer: {layer} is out of range for {where}: it has {n_layers} encoder layers, "
                               f"so layer must be in 0..{n_layers - 1} (some layers must run on the kept tokens)")
    max_pos = cfg.get("max_position_embeddings")
    if isinstance(max_pos, int) and max_length > max_pos:
        raise EdgekdValueError(f"max_length: {max_length} exceeds the model's max_position_embeddings {max_pos}")
    model_names = custom_label_names(cfg) if classifier else None
    if classifier and _num_labels(cfg) != train.num_classes:
        raise EdgekdValueError(f"train: the data has {train.num_classes} classes {train.label_names} but the "
                               f"classifier in {where} has {_num_labels(cfg)} labels")
    if model_names is not None and model_names != list(train.label_names):
        raise EdgekdValueError(f"train: the data's labels {train.label_names} differ from the classifier's labels "
                               f"{model_names} in {where}")
    return model_names


def train_token_pruned(
    model: str | pathlib.Path | Any,
    train: TextDataset,
    dev: TextDataset | None = None,
    *,
    layer: int,
    keep_ratio: float | None = None,
    k: int | None = None,
    scorer: str = "linear",
    scorer_hidden: int = 128,
    num_samples: int = 200,
    sigma: float = 0.2,
    sigma_schedule: str = "linear",
    estimator: str = "exact",
    keep_cls: bool = True,
    training: LoopConfig | Mapping[str, Any] | None = None,
    scorer_lr: float | None = None,
    max_length: int = 128,
    tokenizer: Any = None,
    noise_seed: int | None = None,
    out: str | pathlib.Path | None = None,
    checkpoint_dir: str | pathlib.Path | None = None,
    resume: bool = False,
    order: Callable[[int], Sequence[int]] | None = None,
    progress: bool = True,
) -> PruneResult:
    """Train a token-pruned (PrunePert) classifier; returns a :class:`PruneResult`.

    Args:
        model: a Hugging Face BERT-family model directory (a fine-tuned ``*ForSequenceClassification``
            keeps its head and labels; a pretrained encoder gets a new head with ``train``'s labels),
            or a ``BertForSequenceClassification`` with ``tokenizer`` (seed torch before building it).
        train, dev: labelled texts; ``dev`` gives the final ``metrics["valid"]`` (hard top-k) and,
            with ``training.eval_every``, the dev evaluations that pick the best checkpoint.
        layer, keep_ratio, k, scorer, ..., keep_cls: the :class:`~edgekd.prune.TokenPruningConfig`.
        training: the loop settings (:class:`~edgekd.training.LoopConfig` or a dict; default: 1 epoch,
            lr 5e-5, batch 16, 10% warm-up, AdamW weight decay 0.01, clipping at 1.0).
        scorer_lr: learning rate of the new scorer (default: ``training.lr``).
        max_length: truncation in tokens; short batches are padded to the pruned model's minimum length.
        noise_seed: seed a generator of its own for the perturbations (default: torch's global RNG).
        out: save the model, tokenizer and ``metrics.json`` there.
        checkpoint_dir, resume, order: passed to :func:`edgekd.training.train_loop`.
    """
    from edgekd.prune.export import min_seq_len
    from edgekd.prune.tokens import TokenPruningConfig, apply_token_pruning

    train = _check_data(train, "train")
    dev = _check_data(dev, "dev") if dev is not None else None
    loop = training if isinstance(training, LoopConfig) else LoopConfig.from_dict(dict(training or {}))
    loop.validate()
    if scorer_lr is not None and not (isinstance(scorer_lr, (int, float)) and scorer_lr > 0):
        raise EdgekdValueError(f"scorer_lr: expected a positive number, got {scorer_lr!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise EdgekdValueError(f"max_length: expected an int >= 1, got {max_length!r}")
    pcfg = TokenPruningConfig(layer=layer, keep_ratio=keep_ratio, k=k, scorer=scorer, scorer_hidden=scorer_hidden,
                              num_samples=num_samples, sigma=sigma, sigma_schedule=sigma_schedule, keep_cls=keep_cls,
                              estimator=estimator)
    min_len = min_seq_len(pcfg)
    if max_length < min_len:
        raise EdgekdValueError(f"max_length: {max_length} is below the pruned model's minimum sequence length "
                               f"{min_len} (at keep_ratio {keep_ratio} shorter inputs keep only [CLS])")
    names = list(train.label_names)
    if isinstance(model, (str, pathlib.Path)):
        src, cfg = read_model_config(model)
        if (src / "token_pruning.json").is_file():
            raise EdgekdValueError(f"model: {src} is already token-pruned (token_pruning.json); start from the "
                                   "unpruned model")
        archs = cfg.get("architectures") or []
        is_classifier = any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs)
        model_names = _check_token_pruning_target(cfg, str(src), train, layer, max_length, is_classifier)
        from transformers import AutoModelForSequenceClassification

        seed_everything(loop.seed)
        tokenizer = _load_tokenizer(src)
        labels_kw = {"num_labels": len(names), "id2label": dict(enumerate(names)),
                     "label2id": {n: i for i, n in enumerate(names)}}
        try:
            hf = AutoModelForSequenceClassification.from_pretrained(
                str(src), use_safetensors=True, local_files_only=True, **({} if model_names else labels_kw))
        except Exception as exc:
            raise EdgekdValueError(f"model: cannot load {src} as a sequence classifier "
                                   f"({type(exc).__name__}: {exc})") from None
        source = str(src)
    else:
        hf = _check_module(model, tokenizer, "token-pruning training")
        _check_token_pruning_target(hf.config.to_dict(), "the model", train, layer, max_length, True)
        source = type(model).__name__
    pruned = apply_token_pruning(hf, pcfg)
    generators = {}
    if noise_seed is not None:
        pruned.generator = generators["noise"] = torch.Generator().manual_seed(noise_seed)
    s_lr = scorer_lr or loop.lr
    groups = param_groups(pruned, lr=loop.lr, weight_decay=loop.weight_decay,
                          head_lr_multiplier=loop.head_lr_multiplier,
                          first=[{"params": list(pruned.scorer.parameters()), "lr": s_lr}])
    y = torch.tensor(train.labels, dtype=torch.long)

    def make_batch(idx: list[int]) -> dict:
        return {**_encode(tokenizer, [train.texts[i] for i in idx], max_length, min_len), "labels": y[idx]}

    def on_step(step: int, total: int) -> dict:
        pruned.set_progress(step / total)  # sigma decays linearly to 0 over training
        return {"sigma": f"{pruned.sigma:.3f}"}

    eval_kw = dict(batch_size=max(loop.batch_size, 32), max_length=max_length, min_len=min_len)

    def evaluate(m) -> dict:
        return evaluate_classifier(m, tokenizer, dev, **eval_kw)

    res = train_loop(pruned, len(train), make_batch, loop, groups=groups, on_step=on_step,
                     evaluate=evaluate if dev is not None and loop.eval_every is not None else None,
                     order=order, checkpoint_dir=checkpoint_dir, resume=resume, generators=generators,
                     progress=progress, desc="prune tokens")
    pruned.set_progress(1.0)
    pruned.eval()
    metrics: dict[str, Any] = {
        "model": source, "out": str(out) if out is not None else None, "pruning": pcfg.to_dict(),
        "min_seq_len": min_len, "label_names": names,
        "train": {"data": train.source, "examples": len(train), "epochs": loop.epochs, "steps": res.steps,
                  "batch": loop.batch_size, "grad_accum": loop.grad_accum, "lr": loop.lr, "scorer_lr": s_lr,
                  "max_len": max_length, "seed": loop.seed, "seconds": round(res.seconds, 2),
                  "first_loss": res.first_loss, "final_loss": res.final_loss},
        "valid": None,
    }
    if res.history:
        metrics["train"].update(dev_history=res.history, best=res.best)
    if dev is not None:
        metrics["valid"] = {"data": dev.source, **evaluate_classifier(pruned, tokenizer, dev, **eval_kw,
                                                                      progress=progress)}
    result = PruneResult(pruned, tokenizer, metrics, res)
    if out is not None:
        result.save(out)
    return result


# ------------------------------------------------------------------------------- head pruning
def prune_heads_by_importance(
    model: str | pathlib.Path | Any,
    dev: TextDataset,
    *,
    num_heads: int | None = None,
    fraction: float | None = None,
    tokenizer: Any = None,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
    out: str | pathlib.Path | None = None,
    progress: bool = True,
) -> PruneResult:
    """Remove the least important attention heads (Michel et al. 2019 importance on ``dev``).

    Args:
        model: a fine-tuned (possibly already head-pruned) ``BertForSequenceClassification``
            directory, or such a model with its ``tokenizer``. A given model is pruned in place.
        dev: labelled texts for the importance scores (and the accuracy before / after).
        num_heads: heads to remove in total; or ``fraction`` of the heads still present (rounded).
        out: save the smaller model, tokenizer and ``metrics.json`` there (reload with
            :func:`~edgekd.prune.load_head_pruned_model`).
    """
    from edgekd.prune.heads import head_importance, load_head_pruned_model, prune_least_important_heads, remaining_heads

    dev = _check_data(dev, "dev")
    if (num_heads is None) == (fraction is None):
        raise EdgekdValueError(f"give exactly one of num_heads and fraction, got num_heads={num_heads!r}, "
                               f"fraction={fraction!r}")
    if num_heads is not None and (isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1):
        raise EdgekdValueError(f"num_heads: expected an int >= 1, got {num_heads!r}")
    if fraction is not None and not (isinstance(fraction, (int, float)) and math.isfinite(fraction)
                                     and 0 < fraction < 1):
        raise EdgekdValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
    if isinstance(model, (str, pathlib.Path)):
        src, cfg = read_model_config(model)
        if (src / "token_pruning.json").is_file():
            raise EdgekdValueError(f"model: {src} is token-pruned (token_pruning.json); head pruning needs a plain "
                                   "(or head-pruned) BertForSequenceClassification")
        archs = cfg.get("architectures") or []
        if archs != ["BertForSequenceClassification"]:
            raise EdgekdValueError(f"model: head pruning needs a fine-tuned BertForSequenceClassification, {src} "
                                   f"has architectures {archs!r}")
        n_model, where = _num_labels(cfg), f"the classifier in {src}"
    else:
        src, where = None, "the model"
        n_model = _check_module(model, tokenizer, "head pruning").num_labels
    if dev.num_classes != n_model:
        raise EdgekdValueError(f"dev: the data has {dev.num_classes} classes {dev.label_names} but {where} has "
                               f"{n_model} labels")
    if src is not None:
        seed_everything(seed)
        tokenizer = _load_tokenizer(src)
        model = load_head_pruned_model(src)
    present = remaining_heads(model)
    n = num_heads if num_heads is not None else int(round(fraction * sum(len(h) for h in present)))
    capacity = sum(len(h) - 1 for h in present)
    if n > capacity:
        raise EdgekdValueError(f"num_heads: {n} exceeds the {capacity} heads that can be removed from "
                               f"{src or 'the model'} while every layer keeps one")
    params_before = sum(p.numel() for p in model.parameters())
    eval_kw = dict(batch_size=max(batch_size, 32), max_length=max_length)
    before = evaluate_classifier(model, tokenizer, dev, **eval_kw)
    y = torch.tensor(dev.labels, dtype=torch.long)
    batches = [{**_encode(tokenizer, dev.texts[s:s + batch_size], max_length), "labels": y[s:s + batch_size]}
               for s in range(0, len(dev), batch_size)]
    t0 = time.perf_counter()
    importance = head_importance(model, batches, progress=progress)
    removed = prune_least_important_heads(model, n, importance)
    seconds = time.perf_counter() - t0
    after = evaluate_classifier(model, tokenizer, dev, **eval_kw)
    metrics = {
        "model": str(src) if src is not None else type(model).__name__, "out": str(out) if out is not None else None,
        "num_heads": n, "removed_heads": {str(k): v for k, v in removed.items()},
        "remaining_heads": remaining_heads(model),
        "importance": [{str(h): float(s) for h, s in zip(hs, imp.tolist())} for hs, imp in zip(present, importance)],
        "parameters": {"before": params_before, "after": sum(p.numel() for p in model.parameters())},
        "dev": {"data": dev.source, "before": before, "after": after},
        "seconds": round(seconds, 2), "label_names": list(dev.label_names),
    }
    result = PruneResult(model.eval(), tokenizer, metrics)
    if out is not None:
        result.save(out)
    return result
