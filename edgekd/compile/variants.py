"""Per-target variants: offline graph optimisation and int8 quantisation with onnxruntime.

Settings (recorded in each variant's manifest entry):

* Offline optimisation uses ``ORT_ENABLE_EXTENDED`` for every target. Extended fusions (e.g.
  ``DynamicQuantizeMatMul``, ``FusedMatMul``, attention / layer-norm / GELU fusions) are CPU
  execution-provider contrib ops implemented on x86-64 and ARM64 alike, so the saved graph is
  portable; the layout level (``ORT_ENABLE_ALL``: NCHWc transforms sized to the *host's* SIMD
  width) is hardware-specific and is left to onnxruntime at load time on the device.
* int8, ``scheme="static"`` (the default): :func:`edgekd.quantize.quantize_static`, QDQ format,
  activation ranges calibrated (MinMax) on calibration texts, weights int8 per output channel.
  The activation scales are constants of the graph, so a text's label does not depend on the
  other texts of its batch. ORT has no static LSTM kernel: a BiLSTM student keeps its LSTM in
  fp32 (its embedding Gather and MatMuls are int8).
  ``scheme="dynamic"``: :func:`edgekd.quantize.quantize_dynamic` (activations uint8 quantised at
  run time with one scale for the whole batch tensor: smaller and sometimes faster, but a label
  near a decision boundary can change with the batch's other texts). Both are U8S8. On
  x86-64 CPUs without VNNI, u8 x s8 products are summed in pairs into int16 by ``vpmaddubsw`` and
  can saturate, so the portable x86-64 int8 variant uses ``reduce_range=True`` (7-bit weights);
  a second x86-64 variant with full-range weights is marked ``requires: ["int8_dot"]`` (VNNI:
  ``avx512_vnni``/``avx_vnni``) and is chosen automatically on such CPUs. On ARM64 ORT's
  guidance is that U8S8 and S8S8 are both fine and no saturation workaround is needed, so it uses
  full-range per-channel weights (``udot``/``sdot`` with ``asimddp``, plain NEON otherwise).
Identical model files are shared between variants (the manifest points several variants at one file).
"""
from __future__ import annotations

import pathlib
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from edgekd.errors import EdgekdValueError

OPT_LEVEL = "ORT_ENABLE_EXTENDED"


@dataclass(frozen=True)
class VariantPlan:
    id: str
    target: str
    precision: str
    requires: tuple[str, ...] = ()
    quantization: dict[str, Any] | None = field(default=None, hash=False, compare=False)

    def file_key(self) -> str:
        if self.quantization is None:
            return "fp32"
        return "int8-reduced-range" if self.quantization["reduce_range"] else "int8"


INT8_SCHEMES = ("static", "dynamic")


def _int8_settings(op_types: tuple[str, ...], reduce_range: bool, why: str, scheme: str) -> dict[str, Any]:
    if scheme == "static":
        ops = tuple(o for o in op_types if o != "LSTM")  # no static (QDQ) LSTM kernel in onnxruntime
        return {"scheme": "static", "method": "edgekd.quantize.quantize_static (QDQ, MinMax calibration)",
                "weight_type": "QInt8", "activation_type": "QUInt8 (static, per tensor, calibrated)",
                "per_channel": True, "reduce_range": reduce_range, "op_types_to_quantize": list(ops),
                "extra_options": {}, "batch_invariant": True, "why": why}
    return {"scheme": "dynamic", "method": "edgekd.quantize.quantize_dynamic", "weight_type": "QInt8",
            "activation_type": "QUInt8 (dynamic, per tensor, computed at run time)", "per_channel": True,
            "reduce_range": reduce_range, "op_types_to_quantize": list(op_types),
            "extra_options": {"MatMulConstBOnly": True}, "batch_invariant": False, "why": why}


def plan_variants(targets: tuple[str, ...], precisions: tuple[str, ...], op_types: tuple[str, ...],
                  scheme: str = "static") -> list[VariantPlan]:
    """The variants to build for ``targets`` (``x86_64``, ``arm64``) and ``precisions`` (``fp32``,
    ``int8``); ``scheme``: ``"static"`` (calibrated, batch-invariant) or ``"dynamic"`` int8."""
    if scheme not in INT8_SCHEMES:
        raise EdgekdValueError(f"int8_scheme: expected one of {INT8_SCHEMES}, got {scheme!r}")
    plans: list[VariantPlan] = []
    for t in targets:
        if t not in ("x86_64", "arm64"):
            raise EdgekdValueError(f"targets: unknown target {t!r}; expected 'x86_64' and/or 'arm64'")
    for p in precisions:
        if p not in ("fp32", "int8"):
            raise EdgekdValueError(f"precisions: unknown precision {p!r}; expected 'fp32' and/or 'int8'")
    if not targets or not precisions:
        raise EdgekdValueError("targets/precisions: need at least one of each")
    for t in targets:
        if "fp32" in precisions:
            plans.append(VariantPlan(f"{t}-fp32", t, "fp32"))
        if "int8" in precisions and t == "x86_64":
            plans.append(VariantPlan("x86_64-int8", t, "int8", (), _int8_settings(
                op_types, True, "portable x86-64: 7-bit weights avoid u8s8 int16 saturation on CPUs without VNNI", scheme)))
            plans.append(VariantPlan("x86_64-int8-vnni", t, "int8", ("int8_dot",), _int8_settings(
                op_types, False, "x86-64 with VNNI (avx512_vnni/avx_vnni): no saturation, full-range weights", scheme)))
        if "int8" in precisions and t == "arm64":
            plans.append(VariantPlan("arm64-int8", t, "int8", (), _int8_settings(
                op_types, False, "ARM64: ORT guidance, U8S8/S8S8 both fine, no reduce_range needed", scheme)))
    return plans


def ort_optimize(src: pathlib.Path, dst: pathlib.Path, level: str = OPT_LEVEL) -> dict[str, Any]:
    """Optimise ``src`` offline with onnxruntime and save it to ``dst``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.optimized_model_filepath = str(dst)
    opts.intra_op_num_threads = 1
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    if not dst.is_file():
        raise EdgekdValueError(f"onnxruntime did not write the optimised model {dst}")
    return {"tool": "onnxruntime.InferenceSession(optimized_model_filepath=...)", "level": level,
            "at_load_time": "ORT_ENABLE_ALL"}


def quantize_int8(src: pathlib.Path, dst: pathlib.Path, settings: dict[str, Any],
                  calibration: list[dict[str, Any]] | None = None) -> None:
    """int8 quantisation of ``src`` into ``dst`` with the recorded ``settings`` (through the one
    wrapper of :mod:`edgekd.quantize`); ``calibration``: model feeds, needed by the static scheme."""
    from edgekd.quantize import quantize_dynamic, quantize_static

    common = dict(per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                  op_types=settings["op_types_to_quantize"], extra_options=settings["extra_options"])
    if settings.get("scheme", "dynamic") == "static":
        if not calibration:
            raise EdgekdValueError("int8 static quantisation needs calibration texts")
        quantize_static(src, dst, calibration, method="minmax", **common)
    else:
        quantize_dynamic(src, dst, **common)


def build_variant_files(fp32_onnx: pathlib.Path, plans: list[VariantPlan], out_dir: pathlib.Path,
                        calibration: list[dict[str, Any]] | None = None) -> dict[str, tuple[str, dict]]:
    """Write one optimised file per distinct setting into ``out_dir``; returns
    ``{file_key: (relative file name, optimisation record)}``. ``calibration``: model feeds for
    static int8."""
    out: dict[str, tuple[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="edgekd-compile-") as tmp:
        tmp = pathlib.Path(tmp)
        for plan in plans:
            key = plan.file_key()
            if key in out:
                continue
            name = f"model.{key}.onnx"
            if plan.quantization is None:
                opt = ort_optimize(fp32_onnx, out_dir / name)
            else:
                # quantise the exported graph (ORT's quantiser wants plain ops), then optimise the
                # int8 graph offline so fusions such as DynamicQuantizeMatMul are saved in it
                q = tmp / f"{key}.onnx"
                quantize_int8(fp32_onnx, q, plan.quantization, calibration)
                opt = ort_optimize(q, out_dir / name)
            out[key] = (name, opt)
    return out


def copy_tokenizer(src: pathlib.Path, dst: pathlib.Path) -> None:
    shutil.copyfile(src, dst)
