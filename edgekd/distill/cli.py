"""``edgekd distill`` and ``edgekd explain``: thin layers over the Python API.

The flags of ``edgekd distill`` (and ``edgekd demo``, which reuses :func:`add_config_flags`) are
built from the fields of the config's tables, so no default is written twice: ``--train``,
``--limit``, ``--sample`` ([data]); ``--teacher``, ``--encoder``, ``--teacher-<field>`` ([teacher]);
``--ig-<field>`` ([ig]); ``--embeddings``, ``--hidden-size``, ``--max-length`` ... ([student]);
``--methods``, ``--epochs``, ``--batch-size``, ``--lr`` ... ([train]); ``--eval-<field>`` ([eval]);
``--out``, ``--seed``, ``--device``, ``--threads``, ``--cache-dir`` ([run]). Any setting can also be
given as ``table.key=value`` after the flags (or with ``--set``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edgekd import cliflags
from edgekd.errors import EdgekdValueError

# (table, dataclass "module:Name", flag prefix, {field: flag})
_TABLES = [
    ("data", "edgekd.data.config:DataConfig", "", {}),
    ("teacher", "edgekd.teacher.config:TeacherConfig", "teacher-", {"model": "--teacher", "encoder": "--encoder"}),
    ("ig", "edgekd.teacher.config:AnnotateConfig", "ig-", {}),
    ("student", "edgekd.students.config:StudentConfig", "", {}),
    ("train", "edgekd.distill.config:TrainSettings", "", {"seed": "--student-seed"}),
    ("eval", "edgekd.distill.config:EvalConfig", "eval-", {}),
    ("run", "edgekd.distill.config:RunConfig", "", {}),
]
# old flag -> new flag (hidden, one deprecation line)
_OLD_FLAGS = {
    "--valid-limit": "--valid-sample",
    "--teacher-limit": "--teacher-sample",
    "--attribute-limit": "--ig-sample",
    "--eval-attribute-limit": "--ig-valid-sample",
}


def _cls(spec: str):
    import importlib

    mod, name = spec.split(":")
    return getattr(importlib.import_module(mod), name)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """Every table's flags, the old spellings, ``--no-progress``/``--no-resume``, ``--set`` and the
    trailing ``table.key=value`` overrides."""
    maps = {}
    for table, spec, prefix, rename in _TABLES:
        maps[table] = cliflags.add_dataclass_flags(p, _cls(spec), prefix=prefix, rename=rename,
                                                   group=f"[{table}] settings")
    p.set_defaults(_config_flags=maps)
    have = p._option_string_actions  # noqa: SLF001
    for old, new in _OLD_FLAGS.items():
        cliflags.add_alias(p, old, new, dest=have[new].dest, type=have[new].type)
    cliflags.add_old_spellings(p)
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    p.add_argument("--no-resume", dest="no_resume", action="store_true",
                   help="ignore the cached teacher, annotations and checkpoints")
    p.add_argument("--print-config", dest="print_config", action="store_true",
                   help="print the resolved settings as TOML (a config file for --config) and exit")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any setting as table.key=VALUE (a TOML value), repeatable: --set train.alpha=0.7")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="settings as table.key=VALUE after the flags, e.g. train.epochs=3 ig.steps=16")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, as {dotted key: value} (flags, then --set, then
    the trailing KEY=VALUE items)."""
    from edgekd.settings import parse_overrides

    out: dict[str, Any] = {}
    for table, mapping in getattr(args, "_config_flags", {}).items():
        for name, v in cliflags.dataclass_values(args, mapping).items():
            out[f"{table}.{name}"] = v
    if getattr(args, "no_progress", False):
        out["run.progress"] = False
    if getattr(args, "no_resume", False):
        out["run.resume"] = False
    out.update(parse_overrides((getattr(args, "set", None) or []) + (getattr(args, "overrides", None) or [])))
    return out


def config_from_args(args: argparse.Namespace):
    """The :class:`DistillConfig` of ``edgekd distill``: ``--config`` (or the defaults), then the flags."""
    from edgekd.distill.config import DistillConfig

    cfg = DistillConfig.from_toml(args.config) if getattr(args, "config", None) else DistillConfig()
    return cfg.override(overrides_from_args(args), "command line")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a teacher into BiLSTM students and compare methods",
                       description="Run the distillation pipeline (data, teacher, annotation, students, table). "
                                   "Settings: --config FILE (TOML tables [data] [teacher] [ig] [student] [train] "
                                   "[eval] [run]), then the flags, then table.key=value overrides.")
    p.add_argument("--config", help="a TOML config (tables [data] [teacher] [ig] [student] [train] [eval] [run])")
    add_config_flags(p)
    p.set_defaults(func=cmd_distill)

    e = sub.add_parser("explain", help="explain a student's predictions word by word (text and HTML)",
                       description="Per-word attention of a student bundle (config.json, model.safetensors, tokenizer.json).")
    e.add_argument("--model", required=True, help="student bundle dir (e.g. runs/demo-quick/dixtill/best)")
    e.add_argument("--text", action="append", help="a text to explain (repeatable)")
    e.add_argument("--file", help="a file with one text per line")
    cliflags.add_flags(e, "--out", out=dict(help="write an HTML heatmap page to this file"))
    cliflags.add_alias(e, "--html", "--out")
    e.set_defaults(func=cmd_explain)


def print_report(rep: dict, cfg, title: str) -> None:
    """The distillation table with its notes, as ``edgekd distill`` and ``edgekd demo`` print it."""
    from edgekd.distill.report import format_table

    print()
    print(f"== {title} ==")
    for n in rep["notes"]:
        print(f"note: {n}")
    print(format_table(rep))
    print(f"timings (s): {json.dumps(rep['timings_seconds'])}")
    print(f"results: {Path(cfg.run.out) / 'results.md'} (and .json, .csv); student bundles in {cfg.run.out}/<method>/best")


def cmd_distill(args: argparse.Namespace) -> int:
    from edgekd.distill.api import Distiller

    cliflags.note_limit(args, "distill")
    cfg = config_from_args(args)
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    t0 = time.perf_counter()
    rep = Distiller(cfg).run()
    print_report(rep, cfg, "distillation results")
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    return 0


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
    if args.out:
        out = save_html(exps, args.out, title=f"edgekd explanations: {args.model}")
        print(f"HTML heatmap: {out}")
    return 0

