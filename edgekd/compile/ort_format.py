"""ORT-format copies of a bundle's variants, for ONNX Runtime Mobile and reduced (minimal) builds.

``onnxruntime.tools.convert_onnx_models_to_ort`` converts each variant's ONNX file into the
flatbuffer ORT format with the ``Fixed`` optimisation style (optimisations for the CPU execution
provider applied before saving, for the variant's target: ``arm`` for arm64, which also lets
onnxruntime fuse int8 QDQ into its ARM int8 kernels; the generic platform for x86_64, which, unlike
``amd64``, leaves out the NCHWc layout blocked to the converting CPU's SIMD width, so the copy
runs on every x86-64 CPU like the ONNX variants), and writes, per target, the ``required_operators.config`` that onnxruntime's minimal build
takes (``build.sh --minimal_build --include_ops_by_config ...``). Files go under ``ort/`` in the
bundle; each variant's manifest entry gets an ``ort`` record and the manifest an ``ort`` table, so
they are listed and checksummed like every other file. A copy whose logits drift from its ONNX
file beyond the fp32 tolerance (fp32 variants) is refused.
"""
from __future__ import annotations

import contextlib
import io
import pathlib
import shutil
import tempfile
from typing import Any, Callable

import numpy as np

from edgekd.errors import EdgekdError

ORT_DIR = "ort"
# the tool's target_platform per target (None: generic; "amd64" would bake the host's NCHWc blocking)
PLATFORMS = {"x86_64": None, "arm64": "arm"}
STYLE = "Fixed"


def convert_variants_to_ort(out: pathlib.Path, variants: list[dict[str, Any]],
                            logits_of: Callable[[pathlib.Path], np.ndarray], fp32_atol: float) -> dict[str, Any]:
    """Write ``out/ort/<onnx stem>.<target>.ort`` per distinct (file, target) of ``variants`` and
    ``out/ort/required_operators.<target>.config``; adds ``variant["ort"]`` and returns the
    manifest's ``ort`` table. ``logits_of(path)`` runs a model file on the held-out slice."""
    import onnxruntime as ort
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    ort_dir = out / ORT_DIR
    ort_dir.mkdir(exist_ok=True)
    configs: dict[str, str] = {}
    onnx_logits: dict[str, np.ndarray] = {}
    for target in sorted({v["target"] for v in variants}):
        mine = [v for v in variants if v["target"] == target]
        with tempfile.TemporaryDirectory(prefix="edgekd-ort-") as tmp:
            src, dst = pathlib.Path(tmp) / "onnx", pathlib.Path(tmp) / "ort"
            src.mkdir()
            stems = {v["id"]: f"{pathlib.PurePosixPath(v['file']).stem}.{target}" for v in mine}
            for v in mine:
                shutil.copyfile(out / v["file"], src / f"{stems[v['id']]}.onnx")
            log = io.StringIO()
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                convert_onnx_models_to_ort(src, output_dir=dst, optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=PLATFORMS[target])
            for stem in sorted(set(stems.values())):
                if not (dst / f"{stem}.ort").is_file():
                    raise EdgekdError(f"ort: onnxruntime wrote no ORT model for {stem}.onnx:\n{log.getvalue()[-2000:]}")
                shutil.move(dst / f"{stem}.ort", ort_dir / f"{stem}.ort")
            config = f"{ORT_DIR}/required_operators.{target}.config"
            shutil.move(dst / "required_operators.config", out / config)
            configs[target] = config
        for v in mine:
            rel = f"{ORT_DIR}/{stems[v['id']]}.ort"
            if v["file"] not in onnx_logits:
                onnx_logits[v["file"]] = logits_of(out / v["file"])
            diff = float(np.abs(logits_of(out / rel) - onnx_logits[v["file"]]).max())
            if v["precision"] == "fp32" and not diff <= fp32_atol:
                raise EdgekdError(f"ort: {rel} differs from {v['file']} by {diff:.3g} in logits (> {fp32_atol:g})")
            v["ort"] = {"file": rel, "target_platform": PLATFORMS[target] or "generic",
                        "optimization_style": STYLE, "max_abs_logit_diff_vs_onnx": diff,
                        "required_operators": config}
    return {"tool": "onnxruntime.tools.convert_onnx_models_to_ort", "onnxruntime_version": ort.__version__,
            "optimization_style": STYLE, "required_operators": configs,
            "minimal_build": "build.sh --minimal_build --include_ops_by_config <required_operators config>"}
