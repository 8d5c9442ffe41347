"""``edgekd distill``, ``edgekd demo`` and ``edgekd explain``: thin layers over the Python API."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgekd.errors import EdgekdValueError


def _parse_value(text: str) -> Any:
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags that were given, as DistillConfig fields."""
    mapping = {
        "train": "train_path", "valid": "valid_path", "teacher": "teacher", "encoder": "encoder",
        "limit": "train_limit", "valid_limit": "valid_limit", "teacher_limit": "teacher_train_limit",
        "epochs": "epochs", "teacher_epochs": "teacher_epochs", "out": "out_dir", "cache_dir": "cache_dir",
        "ig_steps": "ig_steps", "attribute_limit": "attribute_limit", "eval_attribute_limit": "eval_attribute_limit",
        "embeddings": "embeddings", "threads": "threads", "alpha": "alpha", "tau": "tau", "variant": "variant",
        "seed": "seed", "text_column": "text_column", "label_column": "label_column",
    }
    out: dict[str, Any] = {}
    for flag, fieldname in mapping.items():
        v = getattr(args, flag, None)
        if v is not None:
            out[fieldname] = v
    if getattr(args, "methods", None):
        out["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if getattr(args, "no_progress", False):
        out["progress"] = False
    if getattr(args, "no_resume", False):
        out["resume"] = False
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise EdgekdValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output directory")
    p.add_argument("--cache-dir", dest="cache_dir", help="annotation cache root (default .cache/edgekd)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--methods", help="comma-separated subset of none,kl,mse,dixtill")
    p.add_argument("--epochs", type=int, help="student epochs (maximum; early stopping on validation macro-F1)")
    p.add_argument("--limit", type=int, help="use this many (stratified) training texts")
    p.add_argument("--valid-limit", dest="valid_limit", type=int, help="use this many (stratified) validation texts")
    p.add_argument("--teacher-limit", dest="teacher_limit", type=int, help="fine-tune the teacher on this many texts")
    p.add_argument("--teacher-epochs", dest="teacher_epochs", type=float)
    p.add_argument("--ig-steps", dest="ig_steps", type=int, help="Integrated-Gradients steps")
    p.add_argument("--attribute-limit", dest="attribute_limit", type=int, help="IG on this many training texts")
    p.add_argument("--eval-attribute-limit", dest="eval_attribute_limit", type=int,
                   help="validation texts used for explanation agreement")
    p.add_argument("--embeddings", choices=["glove", "random"])
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    p.add_argument("--no-resume", dest="no_resume", action="store_true", help="ignore cached checkpoints")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any DistillConfig setting (TOML value), repeatable: --set alpha=0.7 --set variant='code'")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a teacher into BiLSTM students and compare methods",
                       description="Run the distillation pipeline (data, teacher, annotation, students, table).")
    p.add_argument("--config", help="a distill.toml (keys = DistillConfig fields; flags override it)")
    p.add_argument("--train", help="training data file or HF datasets dir (default: TFNS)")
    p.add_argument("--valid", help="validation data file or HF datasets dir (default: TFNS)")
    p.add_argument("--text-column", dest="text_column")
    p.add_argument("--label-column", dest="label_column")
    p.add_argument("--teacher", help="a fine-tuned sequence-classification model dir")
    p.add_argument("--encoder", help="a pretrained encoder dir to fine-tune as the teacher (default: MiniLM-L6)")
    p.add_argument("--alpha", type=float)
    p.add_argument("--tau", type=float)
    p.add_argument("--variant", choices=["paper", "code"])
    _add_common(p)
    p.set_defaults(func=cmd_distill)

    d = sub.add_parser("demo", help="the main job on TFNS: teacher -> annotations -> 4 students -> table",
                       description="Run the TFNS comparison (none, kl, mse, dixtill) with a built-in profile.")
    d.add_argument("--profile", choices=["quick", "full"], default="quick")
    d.add_argument("--no-compile", dest="no_compile", action="store_true",
                   help="skip compiling teacher and students to ONNX bundles and benchmarking them")
    _add_common(d)
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("explain", help="explain a student's predictions word by word (text and HTML)",
                       description="Per-word attention of a student bundle (config.json, model.safetensors, tokenizer.json).")
    e.add_argument("--model", required=True, help="student bundle dir (e.g. runs/demo-quick/dixtill/best)")
    e.add_argument("--text", action="append", help="a text to explain (repeatable)")
    e.add_argument("--file", help="a file with one text per line")
    e.add_argument("--html", help="write an HTML heatmap page here")
    e.set_defaults(func=cmd_explain)


def _compile_step(dist) -> None:
    """The main job's last step: teacher and every student -> ONNX bundles (x86-64, arm64;
    fp32, int8) -> benchmarks -> comparison table (see edgekd.compile.compile_and_compare)."""
    from edgekd.compile import compile_and_compare

    cfg = dist.config
    students = {m: r.bundle_dir for m, r in dist.results.items()}
    rep = compile_and_compare(dist.teacher_result().bundle_dir, students, Path(cfg.out_dir) / "bundles",
                              eval_texts=list(dist.valid.texts), eval_labels=[int(y) for y in dist.valid.labels],
                              teacher_max_length=cfg.teacher_max_length, student_max_length=cfg.max_length,
                              progress=cfg.progress)
    print()
    print("== compiled bundles: onnxruntime on this machine (x86-64) and emulated arm64 ==")
    print(rep["markdown"])
    print(f"bundles: {Path(cfg.out_dir) / 'bundles'} (compare.md, compare.json)")


def _run(cfg, title: str, compile_bundles: bool = False) -> int:
    from edgekd.distill.api import Distiller, format_table

    t0 = time.perf_counter()
    dist = Distiller(cfg)
    rep = dist.run()
    print()
    print(f"== {title} ==")
    for n in rep["notes"]:
        print(f"note: {n}")
    print(format_table(rep))
    print(f"timings (s): {json.dumps(rep['timings_seconds'])}")
    print(f"results: {Path(cfg.out_dir) / 'results.md'} (and .json, .csv); student bundles in {cfg.out_dir}/<method>/best")
    if compile_bundles:
        _compile_step(dist)
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from edgekd.distill.api import DistillConfig

    ov = _overrides(args)
    cfg = DistillConfig.from_toml(args.config, **ov) if args.config else DistillConfig(**{}).replace(**ov)
    return _run(cfg, "distillation results")


def cmd_demo(args: argparse.Namespace) -> int:
    from edgekd.distill.api import profile_config

    cfg = profile_config(args.profile, **_overrides(args))
    return _run(cfg, f"TFNS demo ({args.profile} profile)", compile_bundles=not args.no_compile)


def cmd_explain(args: argparse.Namespace) -> int:
    from edgekd.data import WordTokenizer
    from edgekd.distill.explain import explain, save_html
    from edgekd.students import BiLSTMAttentionStudent

    texts = list(args.text or [])
    if args.file:
        p = Path(args.file)
        if not p.is_file():
            raise EdgekdValueError(f"explain: --file {p} does not exist")
        texts += [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not texts:
        raise EdgekdValueError("explain: give --text or --file")
    student = BiLSTMAttentionStudent.from_pretrained(args.model)
    tok = WordTokenizer.from_file(Path(args.model) / "tokenizer.json")
    exps = explain(student, tok, texts)
    for ex in exps:
        print(ex.to_text())
        print()
    if args.html:
        out = save_html(exps, args.html, title=f"edgekd explanations: {args.model}")
        print(f"HTML heatmap: {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from edgekd.cli import main

    sys.exit(main())
