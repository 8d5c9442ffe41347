"""``edgekd prune tokens`` and ``edgekd prune heads``: thin layers over :mod:`edgekd.prune`.

- ``tokens``: equip a Hugging Face BERT / MiniLM sequence-classification directory (fine-tuned, or
  a pretrained encoder that gets a new head with the data's labels) with token pruning after layer
  ``--layer`` (:func:`edgekd.prune.apply_token_pruning`), fine-tune it end to end on the task loss
  with the sigma schedule, evaluate on ``--valid``, save it with ``save_pretrained`` (+ tokenizer)
  and a ``metrics.json``. The result compiles with ``edgekd compile`` (kind ``token_pruned_bert``,
  detected automatically).
- ``heads``: Michel et al. head importance on ``--dev`` and physical removal of the ``--num-heads``
  least important heads (:mod:`edgekd.prune.heads`); the smaller model is saved the same way and
  compiles as ``hf_sequence_classification``.

torch and transformers are imported inside the commands only, so registering them keeps
``edgekd --help`` and the torch-free commands light.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from typing import Any

from edgekd.errors import EdgekdValueError

METRICS_NAME = "metrics.json"


# ----------------------------------------------------------------------------------- arguments
def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-col", "--text-column", dest="text_col", default="text", help="text column (default: text)")
    p.add_argument("--label-col", "--label-column", dest="label_col", default="label",
                   help="label column (default: label)")
    p.add_argument("--max-len", "--max-length", dest="max_len", type=int, default=128,
                   help="truncate texts to this many tokens (default 128)")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="token pruning (PrunePert) or attention-head pruning of a BERT classifier",
                       description="Prune a Hugging Face BERT / MiniLM sequence classifier.")
    psub = p.add_subparsers(dest="prune_command", metavar="COMMAND")

    t = psub.add_parser("tokens", help="add a token scorer + top-k after --layer and fine-tune end to end",
                        description="Token pruning (PrunePert): layers 0..L-1 run on all N tokens, a scorer keeps "
                                    "ceil(keep * N) of them (perturbed top-k in training, hard top-k in eval) and "
                                    "layers L.. run on the kept tokens only.")
    t.add_argument("--model", required=True, help="Hugging Face BERT-family model dir (a fine-tuned "
                   "*ForSequenceClassification, or a pretrained encoder: a new head gets the data's labels)")
    t.add_argument("--layer", type=int, required=True, help="encoder layers run on all tokens before the pruning point")
    t.add_argument("--keep", type=float, required=True, help="fraction of the padded length kept, in (0, 1]")
    t.add_argument("--scorer", choices=["linear", "mlp"], default="linear")
    t.add_argument("--scorer-hidden", dest="scorer_hidden", type=int, default=128, help="width of the MLP scorer")
    t.add_argument("--num-samples", dest="num_samples", type=int, default=200,
                   help="perturbations per training step (default 200)")
    t.add_argument("--sigma", type=float, default=0.2, help="initial perturbation scale (default 0.2)")
    t.add_argument("--sigma-schedule", dest="sigma_schedule", choices=["linear", "constant"], default="linear",
                   help="linear: sigma decays to 0 over training (default)")
    t.add_argument("--estimator", choices=["exact", "diagonal"], default="exact")
    t.add_argument("--train", required=True, help="training data (CSV/TSV/JSONL/Parquet/HF datasets dir)")
    t.add_argument("--valid", help="validation data: accuracy and macro-F1 of the pruned model (hard top-k)")
    t.add_argument("--label-names", dest="label_names",
                   help="comma-separated class names in id order, for integer labels (default: the classifier's "
                        "names, else 0, 1, ...)")
    t.add_argument("--limit", type=int, help="train on N (class-stratified) rows")
    t.add_argument("--valid-limit", dest="valid_limit", type=int, help="evaluate on N (class-stratified) rows")
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--scorer-lr", dest="scorer_lr", type=float, help="learning rate of the new scorer (default: --lr)")
    t.add_argument("--out", required=True, help="output dir (save_pretrained: safetensors + token_pruning.json)")
    _data_args(t)
    t.set_defaults(func=cmd_tokens)

    h = psub.add_parser("heads", help="remove the N least important attention heads (Michel et al. 2019)",
                        description="Attention-head pruning (AHP): head importance E|dL/dxi_h| on --dev, then the "
                                    "--num-heads least important heads are sliced out of the weights.")
    h.add_argument("--model", required=True, help="fine-tuned BertForSequenceClassification dir (may be head-pruned)")
    h.add_argument("--num-heads", dest="num_heads", type=int, required=True, help="heads to remove in total")
    h.add_argument("--dev", required=True, help="labelled dev data for the importance scores")
    h.add_argument("--limit", type=int, help="use N (class-stratified) dev rows")
    h.add_argument("--out", required=True, help="output dir (save_pretrained; reload with load_head_pruned_model)")
    _data_args(h)
    h.set_defaults(func=cmd_heads)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# ------------------------------------------------------------------------------------ helpers
def _require_torch() -> None:
    """A device with only ``edgekd[runtime]`` registers these commands too: say what is missing."""
    import importlib.util

    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgekdValueError(f"edgekd prune needs {' and '.join(missing)} (pip install torch 'edgekd[distill]')")


def _positive(name: str, value: Any, kind: type = int) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (kind is int and int(value) != value):
        raise EdgekdValueError(f"{name}: expected a positive {'integer' if kind is int else 'number'}, got {value!r}")


def _read_model_config(model_dir: str) -> tuple[pathlib.Path, dict[str, Any]]:
    path = pathlib.Path(model_dir)
    if not path.is_dir():
        raise EdgekdValueError(f"--model: {model_dir} is not a directory")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise EdgekdValueError(f"--model: {path} holds no config.json (not a Hugging Face model directory)")
    if not (path / "model.safetensors").is_file():
        raise EdgekdValueError(f"--model: {path} holds no model.safetensors (only safetensors weights are loaded)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekdValueError(f"--model: {cfg_path} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise EdgekdValueError(f"--model: {cfg_path} is not a JSON object")
    return path, cfg


def _custom_label_names(cfg: dict[str, Any]) -> list[str] | None:
    """The classifier's label names, unless they are transformers' defaults (LABEL_0, ...)."""
    id2label = cfg.get("id2label") or {}
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
    except (TypeError, ValueError):
        return None
    if not names or names == [f"LABEL_{i}" for i in range(len(names))]:
        return None
    return names


def _load_data(path: str, flag: str, args: argparse.Namespace, label_names: list[str] | None, limit: int | None):
    """The whole file (so that label names come from every row), then a class-stratified subset of
    ``limit`` rows (original order kept)."""
    from edgekd.data import load_dataset

    try:
        data = load_dataset(path, text_column=args.text_col, label_column=args.label_col, label_names=label_names)
    except EdgekdValueError as exc:
        raise EdgekdValueError(f"{flag}: {exc}") from exc
    return data.stratified_sample(limit, seed=args.seed)


def _tokenizer(path: pathlib.Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True, local_files_only=True)
    except Exception as exc:  # transformers raises OSError / ValueError / TypeError depending on what is missing
        raise EdgekdValueError(f"--model: cannot load a tokenizer from {path} ({type(exc).__name__}: {exc})") from None
    if not getattr(tok, "is_fast", False):
        raise EdgekdValueError(f"--model: {path} has no fast tokenizer (tokenizer.json)")
    return tok


def _encode(tok, texts: list[str], max_len: int, min_len: int = 1) -> dict:
    """Tokenize with dynamic padding; post-pad to at least ``min_len`` (mask 0), as the bundles do."""
    import torch

    enc = dict(tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"))
    n = enc["input_ids"].shape[1]
    if n < min_len:
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        enc = {k: torch.nn.functional.pad(v, (0, min_len - n), value=pad_id if k == "input_ids" else 0)
               for k, v in enc.items()}
    return enc


def _forward_inputs(enc: dict) -> dict:
    keep = ("input_ids", "attention_mask", "token_type_ids")
    return {k: v for k, v in enc.items() if k in keep}


def _evaluate(model, tok, data, batch: int, max_len: int, min_len: int = 1, progress: bool = False) -> dict[str, Any]:
    """Accuracy and macro-F1 (and, for token-pruned models, the kept fraction of the valid tokens)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from edgekd.metrics import macro_f1

    was_training = model.training
    model.eval()
    preds: list[int] = []
    kept = valid = 0
    try:
        with torch.no_grad():
            for s in tqdm(range(0, len(data), batch), desc="evaluate", disable=not progress, unit="batch"):
                enc = _encode(tok, data.texts[s:s + batch], max_len, min_len)
                out = model(**_forward_inputs(enc))
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


def _progress_bar(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=disable, unit="step")


def _write_metrics(out: pathlib.Path, metrics: dict[str, Any]) -> None:
    (out / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------- prune tokens
def cmd_tokens(args: argparse.Namespace) -> int:
    _require_torch()
    keep = args.keep
    if not (isinstance(keep, float) and math.isfinite(keep) and 0.0 < keep <= 1.0):
        raise EdgekdValueError(f"--keep: expected a fraction in (0, 1], got {keep!r}")
    if args.layer < 0:
        raise EdgekdValueError(f"--layer: expected an int >= 0, got {args.layer}")
    _positive("--epochs", args.epochs, float)
    _positive("--batch", args.batch)
    _positive("--lr", args.lr, float)
    if args.scorer_lr is not None:
        _positive("--scorer-lr", args.scorer_lr, float)
    _positive("--max-len", args.max_len)
    for flag, v in (("--limit", args.limit), ("--valid-limit", args.valid_limit), ("--threads", args.threads)):
        if v is not None:
            _positive(flag, v)
    src, cfg = _read_model_config(args.model)
    if (src / "token_pruning.json").is_file():
        raise EdgekdValueError(f"--model: {src} is already token-pruned (token_pruning.json); start from the "
                               "unpruned model")
    if any((cfg.get("edgekd_pruned_heads") or {}).values()):
        raise EdgekdValueError(f"--model: {src} is head-pruned (edgekd_pruned_heads); token pruning of head-pruned "
                               "models is not supported")
    n_layers = cfg.get("num_hidden_layers")
    if isinstance(n_layers, int) and not args.layer < n_layers:
        raise EdgekdValueError(f"--layer: {args.layer} is out of range for {src}: it has {n_layers} encoder layers, "
                               f"so --layer must be in 0..{n_layers - 1} (some layers must run on the kept tokens)")
    max_pos = cfg.get("max_position_embeddings")
    if isinstance(max_pos, int) and args.max_len > max_pos:
        raise EdgekdValueError(f"--max-len: {args.max_len} exceeds the model's max_position_embeddings {max_pos}")
    archs = cfg.get("architectures") or []
    is_classifier = any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs)

    from edgekd.prune.tokens import TokenPruningConfig

    pcfg = TokenPruningConfig(layer=args.layer, keep_ratio=keep, scorer=args.scorer, scorer_hidden=args.scorer_hidden,
                              num_samples=args.num_samples, sigma=args.sigma, sigma_schedule=args.sigma_schedule,
                              estimator=args.estimator)
    from edgekd.prune.export import min_seq_len

    min_len = min_seq_len(pcfg)
    if args.max_len < min_len:
        raise EdgekdValueError(f"--max-len: {args.max_len} is below the pruned model's minimum sequence length "
                               f"{min_len} (at --keep {keep} shorter inputs keep only [CLS])")
    model_names = _custom_label_names(cfg) if is_classifier else None
    given = [n.strip() for n in args.label_names.split(",")] if args.label_names else None
    if given is not None and (not all(given) or len(set(given)) != len(given)):
        raise EdgekdValueError(f"--label-names: expected distinct, non-empty comma-separated names, got {args.label_names!r}")
    if given is not None and model_names is not None and given != model_names:
        raise EdgekdValueError(f"--label-names: {given} differ from the classifier's labels {model_names} in {src}")
    train = _load_data(args.train, "--train", args, given or model_names, args.limit)
    valid = _load_data(args.valid, "--valid", args, train.label_names, args.valid_limit) if args.valid else None
    if is_classifier:
        n_model = len(cfg.get("id2label") or {}) or int(cfg.get("num_labels", 2))
        if n_model != train.num_classes:
            raise EdgekdValueError(f"--train: the data has {train.num_classes} classes {train.label_names} but the "
                                   f"classifier in {src} has {n_model} labels")

    import torch
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from edgekd.prune.tokens import apply_token_pruning

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = _tokenizer(src)
    names = train.label_names
    labels_kw = {"num_labels": len(names), "id2label": dict(enumerate(names)),
                 "label2id": {n: i for i, n in enumerate(names)}}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(src), use_safetensors=True, local_files_only=True, **({} if model_names else labels_kw))
    except Exception as exc:
        raise EdgekdValueError(f"--model: cannot load {src} as a sequence classifier ({type(exc).__name__}: {exc})") from None
    pruned = apply_token_pruning(model, pcfg)

    n = len(train)
    steps_per_epoch = math.ceil(n / args.batch)
    total = max(1, int(round(steps_per_epoch * args.epochs)))
    scorer_params = list(pruned.scorer.parameters())
    ids = {id(p) for p in scorer_params}
    groups = [{"params": [p for p in pruned.parameters() if id(p) not in ids and p.requires_grad], "lr": args.lr},
              {"params": scorer_params, "lr": args.scorer_lr or args.lr}]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * total), total)
    gen = torch.Generator().manual_seed(args.seed)
    y_all = torch.tensor(train.labels, dtype=torch.long)
    losses: list[float] = []
    t0 = time.perf_counter()
    pruned.train()
    bar = _progress_bar(total, "prune tokens", args.no_progress)
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=gen).tolist()
        for s in range(0, n, args.batch):
            if step >= total:
                break
            idx = perm[s:s + args.batch]
            pruned.set_progress(step / total)  # sigma decays linearly to 0 over training
            enc = _encode(tok, [train.texts[i] for i in idx], args.max_len, min_len)
            loss = pruned(**_forward_inputs(enc), labels=y_all[idx]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(pruned.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", sigma=f"{pruned.sigma:.3f}")
    bar.close()
    pruned.set_progress(1.0)
    pruned.eval()
    train_s = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "command": "edgekd prune tokens", "model": str(src), "out": str(args.out), "pruning": pcfg.to_dict(),
        "min_seq_len": min_len, "label_names": names,
        "train": {"data": args.train, "examples": n, "epochs": args.epochs, "steps": total, "batch": args.batch,
                  "lr": args.lr, "scorer_lr": args.scorer_lr or args.lr, "max_len": args.max_len, "seed": args.seed,
                  "seconds": round(train_s, 2), "first_loss": losses[0],
                  "final_loss": sum(losses[-20:]) / len(losses[-20:])},
        "valid": None,
    }
    if valid is not None:
        metrics["valid"] = {"data": args.valid, **_evaluate(pruned, tok, valid, max(args.batch, 32), args.max_len,
                                                             min_len, progress=not args.no_progress)}
    out = pathlib.Path(args.out)
    pruned.save_pretrained(out)
    tok.save_pretrained(str(out))
    _write_metrics(out, metrics)
    v = metrics["valid"] or {}
    print(json.dumps({"out": str(out), "steps": total, "train_seconds": metrics["train"]["seconds"],
                      "final_loss": round(metrics["train"]["final_loss"], 4), "valid_accuracy": v.get("accuracy"),
                      "valid_macro_f1": v.get("macro_f1"), "kept_token_fraction": v.get("kept_token_fraction")}))
    return 0


# -------------------------------------------------------------------------------- prune heads
def cmd_heads(args: argparse.Namespace) -> int:
    _require_torch()
    if isinstance(args.num_heads, bool) or args.num_heads < 1:
        raise EdgekdValueError(f"--num-heads: expected an int >= 1, got {args.num_heads}")
    _positive("--batch", args.batch)
    _positive("--max-len", args.max_len)
    for flag, v in (("--limit", args.limit), ("--threads", args.threads)):
        if v is not None:
            _positive(flag, v)
    src, cfg = _read_model_config(args.model)
    if (src / "token_pruning.json").is_file():
        raise EdgekdValueError(f"--model: {src} is token-pruned (token_pruning.json); head pruning needs a plain "
                               "(or head-pruned) BertForSequenceClassification")
    archs = cfg.get("architectures") or []
    if archs != ["BertForSequenceClassification"]:
        raise EdgekdValueError(f"--model: head pruning needs a fine-tuned BertForSequenceClassification, {src} has "
                               f"architectures {archs!r}")
    n_layers, n_heads = cfg.get("num_hidden_layers"), cfg.get("num_attention_heads")
    if isinstance(n_layers, int) and isinstance(n_heads, int):
        done = sum(len(v) for v in (cfg.get("edgekd_pruned_heads") or {}).values())
        capacity = n_layers * (n_heads - 1) - done
        if args.num_heads > capacity:
            raise EdgekdValueError(f"--num-heads: {args.num_heads} exceeds the {capacity} heads that can be removed "
                                   f"from {src} while every layer keeps one")
    names = _custom_label_names(cfg)
    dev = _load_data(args.dev, "--dev", args, names, args.limit)
    n_model = len(cfg.get("id2label") or {}) or int(cfg.get("num_labels", 2))
    if dev.num_classes != n_model:
        raise EdgekdValueError(f"--dev: the data has {dev.num_classes} classes {dev.label_names} but the classifier "
                               f"in {src} has {n_model} labels")

    import torch

    from edgekd.prune.heads import head_importance, load_head_pruned_model, prune_least_important_heads, remaining_heads

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = _tokenizer(src)
    model = load_head_pruned_model(src)
    params_before = sum(p.numel() for p in model.parameters())
    before = _evaluate(model, tok, dev, max(args.batch, 32), args.max_len)
    heads_before = remaining_heads(model)
    y_all = torch.tensor(dev.labels, dtype=torch.long)
    batches = []
    for s in range(0, len(dev), args.batch):
        enc = _forward_inputs(_encode(tok, dev.texts[s:s + args.batch], args.max_len))
        batches.append({**enc, "labels": y_all[s:s + args.batch]})
    t0 = time.perf_counter()
    importance = head_importance(model, batches, progress=not args.no_progress)
    removed = prune_least_important_heads(model, args.num_heads, importance)
    seconds = time.perf_counter() - t0
    after = _evaluate(model, tok, dev, max(args.batch, 32), args.max_len)
    out = pathlib.Path(args.out)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    metrics = {
        "command": "edgekd prune heads", "model": str(src), "out": str(out), "num_heads": args.num_heads,
        "removed_heads": {str(k): v for k, v in removed.items()},
        "remaining_heads": remaining_heads(model),
        "importance": [{str(h): float(s) for h, s in zip(hs, imp.tolist())} for hs, imp in zip(heads_before, importance)],
        "parameters": {"before": params_before, "after": sum(p.numel() for p in model.parameters())},
        "dev": {"data": args.dev, "before": before, "after": after},
        "seconds": round(seconds, 2), "label_names": dev.label_names,
    }
    _write_metrics(out, metrics)
    print(json.dumps({"out": str(out), "removed_heads": metrics["removed_heads"],
                      "parameters": metrics["parameters"], "dev_accuracy_before": before["accuracy"],
                      "dev_accuracy_after": after["accuracy"]}))
    return 0
