"""The distillation report: the comparison table (markdown, with the paper's numbers), the results
files (``results.json``, ``results.md``, ``results.csv``) and the machine record."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


PAPER = {  # DiXtill (Cantini et al., J. Big Data 2024), TFNS validation split, FinBERT teacher
    "teacher": (0.855, 0.810),
    "none": (0.802, 0.725),
    "kl": (0.827, 0.762),
    "mse": (0.816, 0.752),
    "dixtill": (0.843, 0.789),
}


def _f(x, nd=3) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{x:.{nd}f}"


def format_table(rep: dict, paper: bool = True) -> str:
    """The comparison table as markdown."""
    k = rep.get("top_k", 5)
    head = (f"| model | accuracy | macro-F1 | feature agr.@{k} (attention) | sign agr.@{k} (attention) | "
            f"feature agr.@{k} (IG) | sign agr.@{k} (IG) | parameters | size (MB) |"
            + (" paper acc / F1 |" if paper else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rep["rows"]:
        name = f"teacher: {rep.get('teacher_name', '')}" if r["method"] == "teacher" else f"student: {r['method']}"
        p = PAPER.get(r["method"])
        lines.append(
            f"| {name} | {_f(r['accuracy'])} | {_f(r['macro_f1'])} | {_f(r['feature_agreement_attention'])} | "
            f"{_f(r['sign_agreement_attention'])} | {_f(r['feature_agreement_ig'])} | {_f(r['sign_agreement_ig'])} | "
            f"{r['parameters']:,} | {_f(r['size_mb'], 2)} |" + (f" {p[0]:.3f} / {p[1]:.3f} |" if paper and p else (" |" if paper else ""))
        )
    return "\n".join(lines)


def _machine() -> dict:
    import platform

    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_end": load,
    }


CSV_COLUMNS = ["method", "accuracy", "macro_f1", "feature_agreement_attention", "sign_agreement_attention",
               "feature_agreement_ig", "sign_agreement_ig", "parameters", "size_mb", "best_epoch", "train_seconds"]


def write_results(rep: dict, out: str | os.PathLike) -> None:
    """Write ``results.json``, ``results.md`` and ``results.csv`` of report ``rep`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rep, indent=2, default=str))
    (out / "results.md").write_text(format_table(rep) + "\n")
    with open(out / "results.csv", "w") as f:
        f.write(",".join(CSV_COLUMNS) + "\n")
        for r in rep["rows"]:
            f.write(",".join("" if r[c] is None else str(r[c]) for c in CSV_COLUMNS) + "\n")
