"""The main job's run: distillation (data -> teacher -> annotate -> students -> table), then
teacher and every student -> ONNX bundles (x86-64, arm64; fp32, int8) -> benchmarks -> comparison."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgekd.distill.api import Distiller
from edgekd.distill.config import DistillConfig


def compile_step(dist: Distiller, **options: Any) -> dict[str, Any]:
    """Compile the teacher and every student of a finished :class:`Distiller` into
    ``run.out/bundles``, benchmark them and return :func:`edgekd.compile.compile_and_compare`'s
    result (``markdown`` is the comparison table, also in ``bundles/compare.md``). ``options`` go to
    ``compile_and_compare`` (``arm64=False``, ``min_time``, ``bench_texts``, ...)."""
    from edgekd.compile import compile_and_compare

    cfg = dist.config
    students = {m: r.bundle_dir for m, r in dist.results.items()}
    return compile_and_compare(dist.teacher_result().bundle_dir, students, Path(cfg.run.out) / "bundles",
                               eval_texts=list(dist.valid.texts), eval_labels=[int(y) for y in dist.valid.labels],
                               teacher_max_length=cfg.teacher.max_length, student_max_length=cfg.student.max_length,
                               **{"progress": cfg.run.progress, **options})


def run_pipeline(config: DistillConfig, compile_bundles: bool = True, log: Callable[[str], None] | None = print,
                 on_distilled: Callable[[dict], None] | None = None,
                 compile_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole job; returns ``{"report": <distillation report>, "compare": <compile result or
    None>, "distiller": <the Distiller>}``. ``on_distilled(report)`` runs between distillation and
    compilation (the command line prints the first table there); ``compile_options`` go to
    :func:`compile_step`."""
    dist = Distiller(config, log=log)
    report = dist.run()
    if on_distilled is not None:
        on_distilled(report)
    compare = compile_step(dist, **(compile_options or {})) if compile_bundles else None
    return {"report": report, "compare": compare, "distiller": dist}
