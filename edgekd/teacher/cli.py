"""``edgekd teacher finetune`` and ``edgekd teacher annotate``.

Their settings flags are built from :class:`edgekd.teacher.config.FinetuneConfig` and
:class:`edgekd.teacher.config.AnnotateConfig` (the same fields as the ``[teacher]`` and ``[ig]``
tables of ``edgekd distill``), and the data flags from :class:`edgekd.data.config.DataConfig`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgekd import cliflags
from edgekd.data.config import DataConfig
from edgekd.errors import EdgekdValueError
from edgekd.teacher.config import AnnotateConfig, FinetuneConfig, TeacherConfig

_DATA_FLAGS = ["text_column", "label_column", "label_names", "limit"]


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("teacher", help="teacher finetune | teacher annotate: fine-tune a transformer teacher, "
                                       "annotate data with its logits and IG attributions",
                       description="Teacher commands.")
    tsub = t.add_subparsers(dest="teacher_command", metavar="COMMAND")

    f = tsub.add_parser("finetune", help="fine-tune a pretrained encoder dir into a classifier")
    enc = cliflags.add_dataclass_flags(f, TeacherConfig, only=["encoder"])
    data = cliflags.add_dataclass_flags(f, DataConfig, only=["train", "valid", *_DATA_FLAGS, "sample", "valid_sample"],
                                        helps={"sample": "fine-tune on a class-stratified sample of N training texts",
                                               "train": "training data (default: TFNS train)",
                                               "valid": "validation data for the final scores (default: TFNS "
                                                        "validation when --train is not given)"})
    cliflags.add_flags(f, "--out", "--device", "--threads",
                       out=dict(required=True, help="output dir (save_pretrained, safetensors)"))
    ft = cliflags.add_dataclass_flags(f, FinetuneConfig, group="fine-tuning settings ([teacher] table of a config)")
    cliflags.add_alias(f, "--valid-limit", "--valid-sample", type=int)
    cliflags.add_old_spellings(f)
    f.set_defaults(func=cmd_finetune, _finetune_flags=ft, _data_flags=data, _encoder_flags=enc)

    a = tsub.add_parser("annotate", help="teacher logits + Integrated-Gradients word attributions (cached)")
    a.add_argument("--teacher", required=True, help="fine-tuned sequence-classification dir")
    a.add_argument("--data", help="data to annotate (default: TFNS train)")
    a.add_argument("--tokenizer", help="the student's tokenizer.json (default: built on --data, saved to --out)")
    adata = cliflags.add_dataclass_flags(a, DataConfig, only=_DATA_FLAGS,
                                         helps={"limit": "annotate the FIRST N rows of --data"})
    cliflags.add_flags(a, "--out", "--seed", "--device", "--threads",
                       out=dict(required=True, help="cache dir (chunks of safetensors; resumable)"),
                       seed=dict(help="seed of the stratified --ig-sample (default: 0)"))
    tmax = cliflags.add_dataclass_flags(a, TeacherConfig, only=["max_length"])
    ig = cliflags.add_dataclass_flags(a, AnnotateConfig, prefix="ig-", skip=["valid_sample"],
                                      group="IG settings ([ig] table of a config)")
    for old, new in (("--baseline", "--ig-baseline"), ("--internal-batch-size", "--ig-internal-batch-size"),
                     ("--chunk-size", "--ig-chunk-size"), ("--attribute-limit", "--ig-sample")):
        cliflags.add_alias(a, old, new, type=str if new == "--ig-baseline" else int)
    cliflags.add_old_spellings(a)
    a.set_defaults(func=cmd_annotate, _ig_flags=ig, _data_flags=adata, _max_length_flags=tmax)
    t.set_defaults(func=lambda args: (t.print_help(), 2)[1])


def finetune_config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of ``edgekd teacher finetune`` (its defaults, then the flags)."""
    return FinetuneConfig(**cliflags.dataclass_values(args, args._finetune_flags))


def _data(d: DataConfig, path: str | None, split: str):
    from edgekd.data import load_dataset, load_tfns

    if path is None:
        ds = load_tfns(split)
    else:
        ds = load_dataset(path, split=split if Path(path).is_dir() else None, text_column=d.text_column,
                          label_column=d.label_column, label_names=d.label_names)
    return ds


def _device(args: argparse.Namespace) -> str:
    from edgekd.teacher.config import resolve_device

    return resolve_device(args.device)


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    from edgekd.assets import asset_path
    from edgekd.teacher import finetune_teacher

    cliflags.note_limit(args, "teacher finetune")
    if args.threads:
        torch.set_num_threads(args.threads)
    d = DataConfig(**cliflags.dataclass_values(args, args._data_flags))
    cfg = finetune_config_from_args(args)
    enc = args.encoder or asset_path("minilm")  # raises with the pip line when not installed
    train = _data(d, d.train, "train").head(d.limit).stratified_sample(d.sample, seed=cfg.seed)
    valid = _data(d, d.valid, "validation") if (d.valid or d.train is None) else None
    if valid is not None:
        valid = valid.stratified_sample(d.valid_sample, seed=cfg.seed)
    _, rec = finetune_teacher(enc, train, args.out, valid=valid, config=cfg, device=_device(args))
    v = rec.get("valid") or {}
    print(json.dumps({"out": args.out, "reused": rec.get("reused"), "train_examples": rec.get("train_examples"),
                      "train_seconds": rec.get("train_seconds"), "valid_accuracy": v.get("accuracy"),
                      "valid_macro_f1": v.get("macro_f1")}))
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from edgekd.data import WordTokenizer
    from edgekd.teacher import Teacher, annotate

    if args.threads:
        torch.set_num_threads(args.threads)
    d = DataConfig(**cliflags.dataclass_values(args, args._data_flags))
    ann_cfg = AnnotateConfig(**cliflags.dataclass_values(args, args._ig_flags))
    max_length = TeacherConfig(**cliflags.dataclass_values(args, args._max_length_flags)).max_length
    data = _data(d, args.data, "train").head(d.limit)
    out = Path(args.out)
    if args.tokenizer:
        tok = WordTokenizer.from_file(args.tokenizer)
    else:
        tok = WordTokenizer.train(data.texts)
        from edgekd.distributed import is_main

        if is_main():  # under torchrun every rank trains the same tokenizer; rank 0 writes it
            tok.save(out / "tokenizer.json")
    teacher = Teacher.from_pretrained(args.teacher, max_length=max_length, device=_device(args))
    n = ann_cfg.sample
    idx = data.stratified_indices(n, seed=args.seed or 0) if n and n < len(data) else None
    ann = annotate(teacher, data, tok, cache_dir=out, ig=ann_cfg.ig_config(), attribute_indices=idx,
                   chunk_size=ann_cfg.chunk_size)
    acc = float((ann.logits.argmax(-1) == np.asarray(data.labels)).mean())
    print(json.dumps({"cache": str(out / ann.key), "texts": len(ann), "attributed": int(ann.has_attr.sum()),
                      "teacher_accuracy": round(acc, 4)}))
    return 0
