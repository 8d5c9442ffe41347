"""``edgekd prune tokens`` and ``edgekd prune heads``: argparse -> settings -> :mod:`edgekd.prune.api`.

- ``tokens``: :func:`edgekd.prune.train_token_pruned` (token pruning after ``--layer``, fine-tuned
  on the shared loop, evaluated on ``--valid``), saved under ``--out`` with a ``metrics.json``. The
  result compiles with ``edgekd compile`` (kind ``token_pruned_bert``, detected automatically).
- ``heads``: :func:`edgekd.prune.prune_heads_by_importance` (Michel et al. head importance on
  ``--dev``, the ``--num-heads`` least important heads removed); compiles as
  ``hf_sequence_classification``.

Flags follow the shared grammar (:mod:`edgekd.cliflags`): ``--limit N`` takes the FIRST N rows of
a file, ``--sample N`` a class-stratified random sample (seeded by ``--seed``). Until this release
``--limit`` of ``edgekd prune`` took the stratified sample: it now prints one note saying so, and
``--valid-limit`` (stratified) is a deprecated spelling of ``--valid-sample``. Old spellings
(``--max-len``, ``--batch``, ``--text-col``, ``--label-col``) are hidden aliases that print one
deprecation line.

torch and transformers are imported inside the commands only, so registering them keeps
``edgekd --help`` and the torch-free commands light.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any

from edgekd import cliflags
from edgekd.errors import EdgekdValueError


# ----------------------------------------------------------------------------------- arguments
def _steps_or_epoch(text: str) -> int | str:
    if text == "epoch":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps or 'epoch', got {text!r}") from None


def _common_args(p: argparse.ArgumentParser, what: str) -> None:
    cliflags.add_flags(
        p, "--limit", "--sample", "--text-column", "--label-column", "--max-length", "--batch-size", "--threads",
        "--seed", "--out",
        limit=dict(metavar="N", help=f"use the FIRST N {what} of the file (until this release --limit took a "
                                     "class-stratified sample: that is --sample now)"),
        sample=dict(metavar="N", help=f"use a class-stratified random sample of N {what} (seeded by --seed)"),
        text_column=dict(default="text"), label_column=dict(default="label"),
        max_length=dict(default=128, help="truncate texts to this many tokens (default 128)"),
        batch_size=dict(default=16, help="rows per batch (default 16)"), seed=dict(default=0),
        out=dict(required=True, help="output directory (save_pretrained + tokenizer + metrics.json)"))
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    cliflags.add_old_spellings(p)


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
    cliflags.add_flags(t, "--label-names", label_names=dict(
        help="comma-separated class names in id order, for integer labels (default: the classifier's names, "
             "else 0, 1, ...)"))
    t.add_argument("--valid-sample", dest="valid_sample", type=int, metavar="N",
                   help="evaluate on a class-stratified random sample of N validation rows (seeded by --seed)")
    cliflags.add_alias(t, "--valid-limit", "--valid-sample", type=int)
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--lr", type=float, default=5e-5)
    t.add_argument("--scorer-lr", dest="scorer_lr", type=float, help="learning rate of the new scorer (default: --lr)")
    t.add_argument("--grad-accum", dest="grad_accum", type=int, default=1,
                   help="micro-batches of --batch-size per optimizer step (default 1)")
    t.add_argument("--eval-every", dest="eval_every", type=_steps_or_epoch, metavar="N|epoch",
                   help="evaluate on --valid every N steps (or 'epoch') and keep the best weights (default: "
                        "evaluate only at the end)")
    t.add_argument("--patience", type=int, help="with --eval-every: stop after N evaluations without improvement")
    t.add_argument("--checkpoint-dir", dest="checkpoint_dir",
                   help="write resumable checkpoints (safetensors + JSON) there; --resume continues from them")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    _common_args(t, "training rows")
    t.set_defaults(func=cmd_tokens)

    h = psub.add_parser("heads", help="remove the N least important attention heads (Michel et al. 2019)",
                        description="Attention-head pruning (AHP): head importance E|dL/dxi_h| on --dev, then the "
                                    "--num-heads least important heads are sliced out of the weights.")
    h.add_argument("--model", required=True, help="fine-tuned BertForSequenceClassification dir (may be head-pruned)")
    h.add_argument("--num-heads", dest="num_heads", type=int, required=True, help="heads to remove in total")
    h.add_argument("--dev", required=True, help="labelled dev data for the importance scores")
    _common_args(h, "dev rows")
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


def _check_counts(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    _positive("--batch-size", args.batch_size)
    _positive("--max-length", args.max_length)
    for name in names + ("threads",):
        if getattr(args, name, None) is not None:
            _positive("--" + name.replace("_", "-"), getattr(args, name))


def _load_data(path: str, flag: str, args: argparse.Namespace, label_names: list[str] | None,
               limit: int | None, sample: int | None):
    """The whole file (so that label names come from every row), then its first ``limit`` rows or a
    class-stratified sample of ``sample`` rows (original order kept)."""
    from edgekd.data import load_dataset

    try:
        data = load_dataset(path, text_column=args.text_column, label_column=args.label_column,
                            label_names=label_names)
    except EdgekdValueError as exc:
        raise EdgekdValueError(f"{flag}: {exc}") from exc
    return data.head(limit).stratified_sample(sample, seed=args.seed)


def _api_errors(flags: dict[str, str]):
    """Show the API's ``name: ...`` errors with the command's flag (``--model: ...``)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        try:
            yield
        except EdgekdValueError as exc:
            name, sep, rest = str(exc).partition(": ")
            if sep and name in flags:
                raise EdgekdValueError(f"{flags[name]}: {rest}") from None
            raise

    return ctx()


_FLAGS = {"model": "--model", "layer": "--layer", "max_length": "--max-length", "train": "--train",
          "dev": "--valid", "scorer_lr": "--scorer-lr", "tokenizer": "--model"}


def _setup(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


# ------------------------------------------------------------------------------- prune tokens
def cmd_tokens(args: argparse.Namespace) -> int:
    _require_torch()
    keep = args.keep
    if not (isinstance(keep, float) and math.isfinite(keep) and 0.0 < keep <= 1.0):
        raise EdgekdValueError(f"--keep: expected a fraction in (0, 1], got {keep!r}")
    if args.layer < 0:
        raise EdgekdValueError(f"--layer: expected an int >= 0, got {args.layer}")
    _positive("--epochs", args.epochs, float)
    _positive("--lr", args.lr, float)
    if args.scorer_lr is not None:
        _positive("--scorer-lr", args.scorer_lr, float)
    _check_counts(args, ("limit", "sample", "valid_sample", "grad_accum", "patience"))
    cliflags.note_limit(args, "prune tokens")
    if args.resume and not args.checkpoint_dir:
        raise EdgekdValueError("--resume: needs --checkpoint-dir")
    if args.patience is not None and args.eval_every is None:
        raise EdgekdValueError("--patience: needs --eval-every")
    if args.valid is None and args.eval_every is not None:
        raise EdgekdValueError("--eval-every: needs --valid")

    from edgekd.prune.api import custom_label_names, read_model_config, train_token_pruned
    from edgekd.training import LoopConfig

    with _api_errors(_FLAGS):
        src, cfg = read_model_config(args.model)
    archs = cfg.get("architectures") or []
    is_classifier = any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs)
    model_names = custom_label_names(cfg) if is_classifier else None
    given = args.label_names or None
    if given is not None and len(set(given)) != len(given):
        raise EdgekdValueError(f"--label-names: expected distinct, non-empty comma-separated names, got {given!r}")
    if given is not None and model_names is not None and given != model_names:
        raise EdgekdValueError(f"--label-names: {given} differ from the classifier's labels {model_names} in {src}")
    train = _load_data(args.train, "--train", args, given or model_names, args.limit, args.sample)
    valid = _load_data(args.valid, "--valid", args, train.label_names, None, args.valid_sample) if args.valid else None
    _setup(args)
    loop = LoopConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                      seed=args.seed, eval_every=args.eval_every, patience=args.patience)
    with _api_errors(_FLAGS):
        res = train_token_pruned(
            src, train, valid, layer=args.layer, keep_ratio=keep, scorer=args.scorer, scorer_hidden=args.scorer_hidden,
            num_samples=args.num_samples, sigma=args.sigma, sigma_schedule=args.sigma_schedule,
            estimator=args.estimator, training=loop, scorer_lr=args.scorer_lr, max_length=args.max_length,
            checkpoint_dir=args.checkpoint_dir, resume=args.resume, progress=not args.no_progress)
    res.metrics = {"command": "edgekd prune tokens", **res.metrics}
    res.save(args.out)
    m, v = res.metrics, res.metrics["valid"] or {}
    print(json.dumps({"out": m["out"], "steps": m["train"]["steps"], "train_seconds": m["train"]["seconds"],
                      "final_loss": round(m["train"]["final_loss"], 4), "valid_accuracy": v.get("accuracy"),
                      "valid_macro_f1": v.get("macro_f1"), "kept_token_fraction": v.get("kept_token_fraction")}))
    return 0


# -------------------------------------------------------------------------------- prune heads
def cmd_heads(args: argparse.Namespace) -> int:
    _require_torch()
    if isinstance(args.num_heads, bool) or args.num_heads < 1:
        raise EdgekdValueError(f"--num-heads: expected an int >= 1, got {args.num_heads}")
    _check_counts(args, ("limit", "sample"))
    cliflags.note_limit(args, "prune heads")

    from edgekd.prune.api import custom_label_names, prune_heads_by_importance, read_model_config

    flags = {**_FLAGS, "dev": "--dev", "num_heads": "--num-heads"}
    with _api_errors(flags):
        src, cfg = read_model_config(args.model)
    dev = _load_data(args.dev, "--dev", args, custom_label_names(cfg), args.limit, args.sample)
    _setup(args)
    with _api_errors(flags):
        res = prune_heads_by_importance(src, dev, num_heads=args.num_heads, batch_size=args.batch_size,
                                        max_length=args.max_length, seed=args.seed, progress=not args.no_progress)
    res.metrics = {"command": "edgekd prune heads", **res.metrics}
    res.save(args.out)
    m = res.metrics
    print(json.dumps({"out": m["out"], "removed_heads": m["removed_heads"], "parameters": m["parameters"],
                      "dev_accuracy_before": m["dev"]["before"]["accuracy"],
                      "dev_accuracy_after": m["dev"]["after"]["accuracy"]}))
    return 0
