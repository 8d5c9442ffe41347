"""Seed spread of the DiXtill student comparison: the four students (none, kl, mse, dixtill) trained
again with other student seeds on the *same* teacher and the *same* cached annotations as a
finished ``edgekd demo`` run, then mean, standard deviation and per-seed values per method.

The demo's table is one draw; the gaps between the students' macro-F1 on TFNS are about one point,
which is the size of the seed-to-seed spread of a small BiLSTM. This says which orderings hold.

    .venv/bin/python benchmarks/distill_seeds.py --base runs/demo-quick --seeds 1 2 3 4
      [--profile quick]   -> benchmarks/results/distill_tfns_seeds.md (+ .json)

``--base`` is the finished demo run (its ``results.json`` is seed 0 and its ``teacher/`` is
reused); each seed runs ``edgekd demo --profile P --no-compile train.seed=S`` into
``BASE-seedS`` with the teacher directory pointed at ``BASE/teacher`` (so nothing is re-fine-tuned
and the annotation cache is hit).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

import common

ROOT = common.ROOT
METHODS = ("none", "kl", "mse", "dixtill")
KEYS = ("accuracy", "macro_f1", "feature_agreement_attention", "sign_agreement_attention")


def run_seed(base: pathlib.Path, profile: str, seed: int) -> dict:
    out = base.parent / f"{base.name}-seed{seed}"
    if not (out / "results.json").is_file():
        cmd = [sys.executable, "-m", "edgekd", "demo", "--profile", profile, "--no-compile", "--out", str(out),
               "--no-progress", f"train.seed={seed}", f"teacher.dir='{base / 'teacher'}'"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((out / "results.json").read_text())


def rows_by_method(rep: dict) -> dict[str, dict]:
    return {r["method"]: r for r in rep["rows"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="runs/demo-quick", help="a finished edgekd demo output dir (seed 0)")
    p.add_argument("--profile", default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill_tfns_seeds.md"))
    args = p.parse_args(argv)
    base = pathlib.Path(args.base).resolve()
    if not (base / "results.json").is_file():
        print(f"error: {base}/results.json not found: run `edgekd demo --profile {args.profile}` first", file=sys.stderr)
        return 2
    t0 = time.time()
    reps = {0: json.loads((base / "results.json").read_text())}
    for s in args.seeds:
        reps[s] = run_seed(base, args.profile, s)
    elapsed = time.time() - t0
    seeds = sorted(reps)
    table = {m: {k: [rows_by_method(reps[s])[m][k] for s in seeds] for k in KEYS} for m in METHODS}
    teacher = rows_by_method(reps[0])["teacher"]
    # how often each ordering of macro-F1 holds, seed by seed
    order = {
        "dixtill > kl": sum(a > b for a, b in zip(table["dixtill"]["macro_f1"], table["kl"]["macro_f1"])),
        "kl > none": sum(a > b for a, b in zip(table["kl"]["macro_f1"], table["none"]["macro_f1"])),
        "dixtill > none": sum(a > b for a, b in zip(table["dixtill"]["macro_f1"], table["none"]["macro_f1"])),
        "mse > none": sum(a > b for a, b in zip(table["mse"]["macro_f1"], table["none"]["macro_f1"])),
    }

    def ms(v: list) -> str:
        v = [x for x in v if x is not None]
        if not v:
            return "n/a"
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    lines = [
        f"After `make demo`; {elapsed / 60:.1f} min for the {len(args.seeds)} extra seeds.",
        "",
        f"Same teacher ({teacher['accuracy']:.3f} acc / {teacher['macro_f1']:.3f} macro-F1 on the validation split) and "
        f"the same cached IG annotations for every seed; only the students' seed (initialization, shuffling) changes. "
        f"Seed 0 is the `make demo` run itself. Profile `{args.profile}`: "
        + "; ".join(reps[0].get("notes", [])[:3]),
        "",
        "| method | accuracy (mean ± sd) | macro-F1 (mean ± sd) | feature agr. | sign agr. | macro-F1 per seed |",
        "|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        t = table[m]
        lines.append(f"| {m} | {ms(t['accuracy'])} | {ms(t['macro_f1'])} | {ms(t['feature_agreement_attention'])} | "
                     f"{ms(t['sign_agreement_attention'])} | {', '.join(f'{x:.3f}' for x in t['macro_f1'])} |")
    lines += ["", f"Orderings of macro-F1 that hold, out of {len(seeds)} seeds: "
              + ", ".join(f"{k}: {v}/{len(seeds)}" for k, v in order.items()) + "."]
    out = pathlib.Path(args.out)
    common.write_results_md(out, "DiXtill on TFNS: spread over student seeds", lines, info=common.machine_info(),
                            time=common.now())
    out.with_suffix(".json").write_text(json.dumps({"seeds": seeds, "table": table, "orderings": order,
                                                    "teacher": teacher}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
