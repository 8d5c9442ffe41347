"""``edgekd llm prune`` and ``edgekd llm distill``: thin layers over :mod:`edgekd.llm`.

    edgekd llm prune --model teacher.gguf --calib texts.jsonl --keep-layers 10 --out student/
    edgekd llm distill --teacher teacher.gguf --student student/ --train train.jsonl --valid held.jsonl \\
        --loss forward_kl --out distilled/

Text files: anything :mod:`edgekd.data.readers` reads (``.txt`` one text a line, ``.csv`` / ``.tsv`` /
``.jsonl`` / ``.parquet`` with ``--text-column``).
Texts are packed into ``--max-length``-token sequences (EOS between texts).
"""
from __future__ import annotations

import argparse
import pathlib

from edgekd.errors import EdgekdValueError


def read_texts(path: str, text_column: str = "text", limit: int | None = None) -> list[str]:
    """The non-blank texts of the first ``limit`` rows of a text file (:mod:`edgekd.data.readers`)."""
    from edgekd.data.readers import read_texts as read

    texts = [t for t in read(path, limit, text_column=text_column, label_column=None)[0] if t.strip()]
    if not texts:
        raise EdgekdValueError(f"{path}: no texts (column {text_column!r})")
    return texts


def _common(p: argparse.ArgumentParser) -> None:
    from edgekd import cliflags

    cliflags.add_flags(
        p, "--out", "--text-column", "--max-length", "--limit", "--batch-size", "--seed", "--threads",
        out=dict(required=True, help="output model directory (config + safetensors + tokenizer)"),
        text_column=dict(default="text"), max_length=dict(default=128, help="tokens per packed sequence (default 128)"),
        limit=dict(metavar="N", help="use the FIRST N texts of each file"),
        batch_size=dict(default=4, help="sequences per batch (default 4)"), seed=dict(default=0))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("llm", help="causal-LM students: structured pruning and token-level distillation",
                       description="Make a small generative student from a causal-LM teacher and distil it.")
    lsub = p.add_subparsers(dest="llm_command", metavar="COMMAND")

    pr = lsub.add_parser("prune", help="depth (and width) pruning of a llama-architecture model",
                         description="Keep --keep-layers decoder blocks chosen by --method on the --calib texts; "
                                     "optionally prune MLP channels and KV groups by activation importance.")
    pr.add_argument("--model", required=True, help="model directory, .gguf file or hub id")
    pr.add_argument("--calib", required=True, help="calibration texts")
    pr.add_argument("--keep-layers", dest="keep_layers", type=int, required=True)
    pr.add_argument("--method", choices=["block-influence", "layer-drop", "even"], default="block-influence")
    pr.add_argument("--calib-sequences", dest="calib_sequences", type=int, default=16)
    pr.add_argument("--intermediate-size", dest="intermediate_size", type=int, help="MLP channels kept per layer")
    pr.add_argument("--kv-heads", dest="kv_heads", type=int, help="KV groups kept per layer (with their query heads)")
    _common(pr)
    pr.set_defaults(func=_prune)

    d = lsub.add_parser("distill", help="train a student against a teacher (or CE only) on packed text",
                        description="Token-level KD (edgekd.llm.losses) or --loss ce, on the shared training loop.")
    d.add_argument("--teacher", help="teacher: model directory, .gguf file or hub id (not needed with --loss ce)")
    d.add_argument("--student", required=True, help="student model directory (e.g. from `edgekd llm prune`)")
    d.add_argument("--train", required=True, help="training texts")
    d.add_argument("--valid", help="held-out texts: loss and perplexity before and after")
    d.add_argument("--loss", default="forward_kl", help="ce, forward_kl, reverse_kl, jsd, tv, skew_forward_kl, "
                                                        "skew_reverse_kl, akl, clipped_kl")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--ce-weight", dest="ce_weight", type=float, default=0.0, help="(1 - w) KD + w CE")
    d.add_argument("--beta", type=float, default=0.5, help="generalized JSD's beta (0: forward KL, 1: reverse KL)")
    d.add_argument("--alpha", type=float, default=0.1, help="skew KLs' alpha")
    d.add_argument("--on-policy-lambda", dest="on_policy_lambda", type=float, default=0.0,
                   help="GKD lambda: probability per step of training on student-sampled completions "
                        "(needs a live --teacher)")
    d.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=32,
                   help="length limit of an on-policy completion")
    d.add_argument("--sampling-temperature", dest="sampling_temperature", type=float, default=1.0,
                   help="temperature of the student's on-policy sampling (not the loss's)")
    d.add_argument("--fused", action="store_true",
                   help="KD (+CE) through the fused linear + KD op: the (N, V) student logits never exist")
    d.add_argument("--epochs", type=float, default=1.0)
    d.add_argument("--max-steps", dest="max_steps", type=int)
    d.add_argument("--lr", type=float, default=1e-4)
    d.add_argument("--grad-accum", dest="grad_accum", type=int, default=1)
    d.add_argument("--resume", action="store_true", help="continue from --out/checkpoints")
    _common(d)
    d.set_defaults(func=_distill)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _setup(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def _prune(args) -> int:
    from edgekd.llm.models import count_parameters, load_causal_lm, save_causal_lm
    from edgekd.llm import prune as P
    from edgekd.llm.trainer import pack_texts

    _setup(args)
    texts = read_texts(args.calib, args.text_column, args.limit)
    model, tok = load_causal_lm(args.model)
    calib = pack_texts(tok, texts, args.max_length, max_sequences=args.calib_sequences)["input_ids"]
    batches = P.calibration_batches(calib, batch_size=args.batch_size)
    n = model.config.num_hidden_layers
    if args.method == "even":
        keep = P.evenly_spaced_layers(n, args.keep_layers)
    else:
        imp = (P.block_influence if args.method == "block-influence" else P.layer_drop_importance)(model, batches)
        keep = P.select_layers(imp, args.keep_layers)
    student = P.prune_depth(model, keep)
    if args.intermediate_size is not None or args.kv_heads is not None:
        student = P.prune_width(student, P.width_importance(student, batches),
                                intermediate_size=args.intermediate_size, num_key_value_heads=args.kv_heads)
    save_causal_lm(student, args.out, tok)
    print(f"kept layers {keep}; {count_parameters(student) / 1e6:.1f}M of {count_parameters(model) / 1e6:.1f}M "
          f"parameters -> {args.out}")
    return 0


def _distill(args) -> int:
    from edgekd.llm.models import load_causal_lm, save_causal_lm
    from edgekd.llm.trainer import LLMTrainConfig, pack_texts, train_causal_lm

    _setup(args)
    if args.loss != "ce" and not args.teacher:
        raise EdgekdValueError(f"--teacher is required with --loss {args.loss}")
    train_texts = read_texts(args.train, args.text_column, args.limit)
    valid_texts = read_texts(args.valid, args.text_column, args.limit) if args.valid else None
    student, tok = load_causal_lm(args.student)
    teacher = load_causal_lm(args.teacher, tokenizer=False)[0] if args.loss != "ce" else None
    train = pack_texts(tok, train_texts, args.max_length)
    valid = pack_texts(tok, valid_texts, args.max_length) if valid_texts else None
    cfg = LLMTrainConfig(loss=args.loss, temperature=args.temperature, ce_weight=args.ce_weight,
                         beta=args.beta, alpha=args.alpha, on_policy_lambda=args.on_policy_lambda,
                         max_new_tokens=args.max_new_tokens, sampling_temperature=args.sampling_temperature,
                         fused=args.fused)
    lc = cfg.loop
    lc.epochs, lc.max_steps, lc.lr, lc.batch_size, lc.grad_accum, lc.seed = (
        args.epochs, args.max_steps, args.lr, args.batch_size, args.grad_accum, args.seed)
    out = pathlib.Path(args.out)
    res = train_causal_lm(student, train, teacher=teacher, config=cfg, eval_data=valid,
                          checkpoint_dir=str(out / "checkpoints"), resume=args.resume)
    from edgekd import distributed as dist

    if dist.is_main():  # under torchrun: rank 0 writes the student
        save_causal_lm(student, out, tok)
    msg = f"{res.loop.steps} steps, {res.tokens_trained} tokens"
    if res.eval_after:
        before = f"{res.eval_before['perplexity']:.2f} -> " if res.eval_before else ""
        msg += f"; held-out perplexity {before}{res.eval_after['perplexity']:.2f}"
    print(f"{msg} -> {out}")
    return 0
