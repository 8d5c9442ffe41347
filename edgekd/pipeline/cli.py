"""``edgekd demo``: the main job with a shipped profile (``--profile quick|full`` or a .toml file)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from edgekd.distill.cli import add_config_flags
    from edgekd.pipeline.profiles import profiles

    d = sub.add_parser("demo", help="the main job on TFNS: teacher -> annotations -> 4 students -> bundles -> tables",
                       description="Run the TFNS comparison (none, kl, mse, dixtill) with a shipped profile "
                                   "(edgekd/configs/<profile>.toml), then compile and benchmark every model. "
                                   "Flags and table.key=value items override the profile: "
                                   "edgekd demo --profile quick train.epochs=3. The defaults shown below are "
                                   "those of the settings dataclasses; the profile's own values come first.")
    d.add_argument("--profile", default="quick",
                   help=f"a shipped profile ({', '.join(profiles())}) or a path to a .toml config (default: quick)")
    d.add_argument("--no-compile", dest="no_compile", action="store_true",
                   help="skip compiling teacher and students to ONNX bundles and benchmarking them")
    add_config_flags(d)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from edgekd import cliflags
    from edgekd.distill.cli import overrides_from_args, print_report
    from edgekd.pipeline.profiles import profile_config
    from edgekd.pipeline.run import run_pipeline

    cliflags.note_limit(args, "demo")
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
