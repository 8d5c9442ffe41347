"""``edgekd demo``: the main job with a shipped profile (``--profile default|quick|paper|full`` or a .toml file);
``--task legal-qa``: the legal-QA job (:mod:`edgekd.pipeline.legal_qa`, profiles ``quick`` and ``default``)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgekd.errors import EdgekdValueError


def register(sub: argparse._SubParsersAction) -> None:
    from edgekd.distill.cli import add_config_flags
    from edgekd.pipeline.profiles import TASKS, profiles

    d = sub.add_parser("demo", help="the main job on TFNS: teacher -> annotations -> 4 students -> bundles -> tables "
                                    "(--task legal-qa: the legal-QA job on PolicyQA)",
                       description="Run the TFNS comparison (none, kl, mse, dixtill) with a shipped profile "
                                   "(edgekd/configs/<profile>.toml), then compile and benchmark every model. "
                                   "Flags and table.key=value items override the profile: "
                                   "edgekd demo --profile quick train.epochs=3. The defaults shown below are "
                                   "those of the settings dataclasses; the profile's own values come first. "
                                   "--task legal-qa runs the legal-QA job instead (PolicyQA: synthetic triplets, "
                                   "teacher, students by SFT and KD, reader, SGP; stage times in results.md), "
                                   "with the profiles of edgekd/configs/legal-qa/ and its own tables ([data] "
                                   "[teacher] [synth] [student] [reader] [sgp] [run]) as table.key=value items: "
                                   "edgekd demo --task legal-qa --profile quick student.epochs=1.")
    d.add_argument("--task", choices=TASKS, default="tfns",
                   help="tfns (default): the distillation job; legal-qa: the legal-QA job on PolicyQA")
    d.add_argument("--profile", default="default",
                   help=f"a shipped profile ({', '.join(profiles())}; legal-qa: {', '.join(profiles('legal-qa'))}) "
                        "or a path to a .toml config (default: default, all the data on a CPU; quick: a smoke test "
                        "(legal-qa: under 45 minutes on 2 CPU cores); paper: IG with 50 steps)")
    d.add_argument("--no-compile", dest="no_compile", action="store_true",
                   help="skip compiling teacher and students to ONNX bundles and benchmarking them")
    d.add_argument("--restart", action="store_true",
                   help="legal-qa: delete the earlier run's stage results under run.out first (default: a rerun "
                        "skips the stages already done with the same settings)")
    add_config_flags(d)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from edgekd import cliflags
    from edgekd.distill.cli import overrides_from_args, print_report
    from edgekd.pipeline.profiles import profile_config
    from edgekd.pipeline.run import run_pipeline

    cliflags.note_limit(args, "demo")
    if args.task == "legal-qa":
        return cmd_legal_qa(args)
    if args.restart:
        raise EdgekdValueError("--restart is for --task legal-qa; the TFNS job takes --no-resume")
    cfg = profile_config(args.profile, overrides_from_args(args), where="command line")
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    t0 = time.perf_counter()
    res = run_pipeline(cfg, compile_bundles=not args.no_compile,
                       on_distilled=lambda rep: print_report(rep, cfg, f"TFNS demo ({cfg.run.profile} profile)"))
    if res["compare"] is not None:
        res = res["compare"]
        print()
        print("== compiled bundles: onnxruntime on this machine (x86-64) and emulated arm64 ==")
        print(res["markdown"])
        print(f"bundles: {Path(cfg.run.out) / 'bundles'} (compare.md, compare.json)")
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    return 0


def cmd_legal_qa(args: argparse.Namespace) -> int:
    """``edgekd demo --task legal-qa``: :func:`edgekd.pipeline.legal_qa.run_legal_qa` with a profile."""
    from edgekd.distill.cli import overrides_from_args
    from edgekd.pipeline.legal_qa import legal_qa_config, run_legal_qa

    if args.no_compile:
        raise EdgekdValueError("--no-compile is a TFNS flag; the legal-qa job compiles nothing")
    cfg = legal_qa_config(args.profile, overrides_from_args(args), where="command line")
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    t0 = time.perf_counter()
    res = run_legal_qa(cfg, restart=args.restart, log=lambda s: print(s, flush=True))
    print()
    print(res["markdown"])
    print(f"results: {Path(cfg.run.out) / 'results.md'} (and results.json, stages/)")
    print(f"wall time: {time.perf_counter() - t0:.0f} s")
    return 0
