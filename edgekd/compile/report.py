"""Compile a teacher and its students, benchmark every variant and build the comparison table
(the main job, :mod:`edgekd.pipeline`, calls this as its compile -> compare step).

>>> from edgekd.compile import compile_and_compare
>>> rep = compile_and_compare("runs/demo-quick/teacher", {"dixtill": "runs/demo-quick/dixtill/best"},
...                           "runs/demo-quick/bundles", eval_texts=texts, eval_labels=labels)
>>> print(rep["markdown"])

x86-64 rows are wall-clock measurements on this machine (each bundle benchmarked in a fresh
process); arm64 rows are emulated instruction counts per batch-1 inference (qemu, Neoverse-N1),
next to x86-64 instruction counts from callgrind when ``count_x86=True``.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Sequence

from edgekd.errors import EdgekdValueError


def compile_and_compare(
    teacher_dir: str | pathlib.Path,
    students: Mapping[str, str | pathlib.Path],
    out_dir: str | pathlib.Path,
    *,
    eval_texts: Sequence[str],
    eval_labels: Sequence[int],
    parity_slice: int = 256,
    teacher_max_length: int = 64,
    student_max_length: int = 64,
    bench_texts: int = 256,
    min_time: float = 1.0,
    threads: int | None = None,
    arm64: bool | str = "auto",
    count_x86: bool = False,
    arm64_repeat: int = 2,
    overwrite: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Compile ``teacher_dir`` (a HF sequence-classification dir) and each student dir (saved
    BiLSTM student with its ``tokenizer.json``) into bundles under ``out_dir`` (a path that already
    is a bundle is used as it is), benchmark teacher
    fp32 / int8 and every student fp32 / int8 on x86-64 (and arm64 instruction counts when the
    emulator is there), and write ``out_dir/compare.{md,json}``. Accuracy and macro-F1 are measured
    by the bundles themselves on all of ``eval_texts``/``eval_labels``; the parity check uses the
    first ``parity_slice`` of them. Returns ``{"bundles", "results", "markdown"}``."""
    from edgekd.compile.pipeline import compile_model
    from edgekd.runtime.bench import bench_subprocess, compare_markdown
    from edgekd.runtime.emulation import arm64_available, count_x86_instructions, run_probe_arm64

    if not students:
        raise EdgekdValueError("students: give at least one {name: student_dir}")
    texts, labels = list(eval_texts), list(eval_labels)
    if len(texts) != len(labels) or not texts:
        raise EdgekdValueError(f"eval_texts/eval_labels: need equal non-empty lengths, got {len(texts)} and {len(labels)}")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    use_arm = arm64 is True or (arm64 == "auto" and arm64_available())
    sl = slice(0, min(parity_slice, len(texts)))
    def ensure(kind: str, src, name: str, max_length: int, arm_slice: int) -> pathlib.Path:
        src = pathlib.Path(src)
        if (src / "manifest.json").is_file():  # already a bundle: benchmark it as it is
            return src
        return compile_model(kind, src, out_dir / name, eval_texts=texts[sl], eval_labels=labels[sl],
                             max_length=max_length, arm64_check=use_arm, arm64_slice=arm_slice, overwrite=overwrite,
                             progress=progress, name=name)

    # emulating a transformer is slow (minutes per batch on a loaded machine): 4 texts for the teacher
    bundles = {"teacher": ensure("hf_sequence_classification", teacher_dir, "teacher", teacher_max_length, 4)}
    for name, d in students.items():
        bundles[name] = ensure("bilstm_attention", d, name, student_max_length, 64)
    x86: list[dict[str, Any]] = []
    arm: list[dict[str, Any]] = []
    for name, b in bundles.items():
        manifest = json.loads((b / "manifest.json").read_text(encoding="utf-8"))
        precisions = ["fp32", "int8"]
        if use_arm and not any(v["target"] == "arm64" for v in manifest["variants"]):
            raise EdgekdValueError(f"{name}: bundle {b} has no arm64 variants; compile with targets including arm64")
        counts = {}
        if count_x86:
            counts = {r["variant"]: r for r in count_x86_instructions(b, texts[0], precisions)}
        for prec in precisions:
            r = bench_subprocess(b, target="x86_64", precision=prec, threads=threads, texts=texts[:bench_texts],
                                 min_time=min_time, accuracy_texts=texts, accuracy_labels=labels)
            if r["variant"] in counts:
                r["instructions"] = counts[r["variant"]]
            x86.append(r)
        if use_arm:
            rows = run_probe_arm64(b, texts[:1], precisions, count_repeat=arm64_repeat)
            for prec, row in zip(precisions, rows):
                v = next(x for x in manifest["variants"] if x["id"] == row["variant"])
                files = manifest["files"]
                emu = v["parity"].get("emulated_arm64", {})
                arm.append({"name": name, "variant": row["variant"], "target": "arm64", "precision": prec,
                            "size_bytes": files[v["file"]]["size"] + files[manifest["preprocessing"]["tokenizer"]]["size"],
                            "instructions": {"instructions_per_inference": row["instructions_per_inference"],
                                             "counter": f"qemu-user TCG plugin ({row['cpu']})"},
                            # accuracy: the x86-64 rows measure the same files on every text; the
                            # emulated run (parity.emulated_arm64) only checks outputs on a few texts
                            "accuracy": None, "macro_f1": None,
                            "emulated_check": {k: emu.get(k) for k in ("texts", "max_abs_logit_diff_vs_host_fp32",
                                                                       "label_agreement_vs_host_fp32")}})
    md = ["## x86-64 (wall clock on this machine; baseline: teacher fp32)", "", compare_markdown(x86, 0)]
    if arm:
        md += ["## arm64 (emulated instruction counts per batch-1 inference; baseline: teacher fp32)", "",
               compare_markdown(arm, 0)]
    markdown = "\n".join(md)
    (out_dir / "compare.md").write_text(markdown, encoding="utf-8")
    (out_dir / "compare.json").write_text(json.dumps({"x86_64": x86, "arm64": arm}, indent=2), encoding="utf-8")
    return {"bundles": {k: str(v) for k, v in bundles.items()}, "results": {"x86_64": x86, "arm64": arm},
            "markdown": markdown}
