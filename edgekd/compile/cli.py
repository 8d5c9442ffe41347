"""``edgekd compile``: model directory -> verified bundle (directory + .zip)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a student, a Hugging Face teacher or a pruned model into an ONNX bundle",
                       usage="edgekd compile [-h] [KIND] SOURCE OUT --eval-data FILE [options]")
    p.add_argument("kind", nargs="?", default="auto", metavar="KIND",
                   help="model kind: bilstm_attention (student), hf_sequence_classification (teacher, head-pruned "
                        "BERT), token_pruned_bert (edgekd prune tokens); default auto: detected from SOURCE")
    p.add_argument("source", help="model directory")
    p.add_argument("out", help="bundle directory to write (the .zip goes next to it)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: SOURCE/tokenizer.json)")
    p.add_argument("--eval-data", required=True, help="held-out CSV/JSONL (text[,label]) for the parity check")
    p.add_argument("--eval-limit", type=int, default=256)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--targets", default="x86_64,arm64")
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--name")
    p.add_argument("--no-arm64-check", action="store_true", help="skip running the arm64 variants under emulation")
    p.add_argument("--no-zip", action="store_true")
    p.add_argument("--ort", action="store_true",
                   help="also write ORT-format (.ort) copies and required-operators configs (ONNX Runtime Mobile)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_compile)


def _compile(args: argparse.Namespace) -> int:
    from edgekd.compile.pipeline import compile_model
    from edgekd.runtime.bench import load_texts

    texts, labels = load_texts(args.eval_data, args.eval_limit)
    out = compile_model(args.kind, args.source, args.out, eval_texts=texts, eval_labels=labels,
                        tokenizer=args.tokenizer, max_length=args.max_length,
                        targets=tuple(t for t in args.targets.split(",") if t),
                        precisions=tuple(p for p in args.precisions.split(",") if p), opset=args.opset,
                        name=args.name, arm64_check=not args.no_arm64_check and "auto",
                        make_zip=not args.no_zip, ort_format=args.ort, overwrite=args.overwrite)
    print(out)
    return 0
