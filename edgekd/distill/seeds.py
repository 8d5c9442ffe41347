"""Seeds for the final comparison: every student method trained with ``train.seeds`` student seeds
on the same teacher, annotations and dev split; mean +- sd per method and the paired counts of
seeds where DiXtill > KL > none in macro-F1 (seed k of one method against seed k of the other:
same initialisation seed, same shuffling seed).

The table's rows stay the first seed's models (the ones compiled to bundles); the summary is
printed under it (:func:`seed_table`).
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

KEYS = ("accuracy", "macro_f1", "feature_agreement_attention")
ORDER = ("dixtill", "kl", "none")  # the paper's claim, best first


def summarize_seeds(per_seed: Mapping[str, Sequence[Mapping[str, Any]]], seeds: Sequence[int]) -> dict[str, Any]:
    """``per_seed[method][k]``: the row of seed ``seeds[k]`` (keys :data:`KEYS`). Returns
    ``{"seeds", "methods": {m: {key: {"mean", "sd", "values"}}}, "paired": {...}}``; ``paired``
    counts, over the seeds, ``a > b`` in macro-F1 for each consecutive pair of :data:`ORDER` that is
    present, and the whole chain (ties count as not greater)."""
    out: dict[str, Any] = {"seeds": list(seeds), "methods": {}, "paired": {}}
    n = len(seeds)
    for m, rows in per_seed.items():
        if len(rows) != n:
            raise ValueError(f"summarize_seeds: {m} has {len(rows)} rows for {n} seeds")
        out["methods"][m] = {}
        for k in KEYS:
            vals = [r.get(k) for r in rows]
            if any(v is None for v in vals):
                continue
            out["methods"][m][k] = {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if n > 1 else 0.0,
                                    "values": [float(v) for v in vals]}
    chain = [m for m in ORDER if m in per_seed]
    wins_all = [True] * n
    for a, b in zip(chain, chain[1:]):
        wins = [per_seed[a][i]["macro_f1"] > per_seed[b][i]["macro_f1"] for i in range(n)]
        out["paired"][f"{a} > {b}"] = sum(wins)
        wins_all = [x and y for x, y in zip(wins_all, wins)]
    if len(chain) > 2:
        out["paired"][" > ".join(chain)] = sum(wins_all)
    return out


def seed_table(summary: Mapping[str, Any]) -> str:
    """The seed summary as markdown: one row per method (mean +- sd), then the paired counts."""
    n = len(summary["seeds"])
    lines = [f"Over {n} student seeds ({', '.join(str(s) for s in summary['seeds'])}); mean ± sd on the validation "
             "split (every seed selected on the dev split):", "",
             "| student | accuracy | macro-F1 | feature agr. (attention) |", "|---|---|---|---|"]
    for m, d in summary["methods"].items():
        cells = [f"{d[k]['mean']:.3f} ± {d[k]['sd']:.3f}" if k in d else "-" for k in KEYS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if summary["paired"]:
        lines += ["", "Paired macro-F1 (seed by seed): " + "; ".join(
            f"{k}: {v}/{n}" for k, v in summary["paired"].items())]
    return "\n".join(lines)


def train_seeds(dist) -> dict[str, Any]:
    """Train every method of a :class:`edgekd.distill.api.Distiller` (after its ``run`` trained the
    first seed) with the further seeds ``s+1 .. s+seeds-1`` and summarize all of them."""
    from dataclasses import asdict

    cfg = dist.config
    s0 = cfg.resolved_student_seed
    seeds = [s0 + k for k in range(cfg.train.seeds)]
    per_seed = {m: [asdict(dist.results[m])] for m in cfg.train.methods}
    for s in seeds[1:]:
        for m in cfg.train.methods:
            per_seed[m].append(asdict(dist.train_method(m, seed=s)))
    return summarize_seeds(per_seed, seeds)
