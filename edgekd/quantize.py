"""Post-training int8 quantisation of ONNX models (a baseline next to token and head pruning).

Thin, validated wrappers over ``onnxruntime.quantization``:

- :func:`quantize_dynamic`: int8 weights, activations quantised on the fly at run time. No data
  needed; the usual first choice for transformer encoders on CPU (MatMul / Gemm / Attention).
- :func:`quantize_static`: QDQ format with activation ranges calibrated on sample inputs
  (MinMax, Entropy or Percentile). Needs representative calibration batches; helps where the
  dynamic scheme's run-time range computation costs too much (small batches, many small MatMuls).

Both run ONNX Runtime's pre-processing (shape inference and graph optimisation) first when
``preprocess=True``, which the ONNX Runtime documentation recommends before quantising; its
*symbolic* shape inference is skipped (see :func:`_preprocessed`).

These are the only int8 wrappers in edgekd: the compile step (``edgekd.compile.variants``) calls
them for its int8 bundle variants (static by default: a fixed activation scale makes a text's label
independent of the other texts in its batch, which the dynamic scheme does not). They work on
plain ``.onnx`` files so that any exported model (teacher, token-pruned or head-pruned) can be
quantised and measured.
"""
from __future__ import annotations

import pathlib
import tempfile
from typing import Iterable, Mapping

import numpy as np

from edgekd.errors import EdgekdValueError

__all__ = ["quantize_dynamic", "quantize_static", "CALIBRATION_METHODS", "QUANT_TYPES"]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_TYPES = ("qint8", "quint8")


def _quant_type(name: str, arg: str):
    from onnxruntime.quantization import QuantType

    if name not in QUANT_TYPES:
        raise EdgekdValueError(f"{arg} must be one of {QUANT_TYPES}, got {name!r}")
    return QuantType.QInt8 if name == "qint8" else QuantType.QUInt8


def _check_paths(src: str | pathlib.Path, dst: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    src_p, dst_p = pathlib.Path(src), pathlib.Path(dst)
    if not src_p.is_file():
        raise EdgekdValueError(f"model {str(src_p)!r} does not exist or is not a file")
    if src_p.resolve() == dst_p.resolve():
        raise EdgekdValueError("the quantised model must be written to a different path than the source")
    if not dst_p.parent.is_dir():
        raise EdgekdValueError(f"output directory {str(dst_p.parent)!r} does not exist")
    return src_p, dst_p


def _preprocessed(src: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = workdir / "preprocessed.onnx"
    # ONNX Runtime's *symbolic* shape inference cannot follow the position-id slicing of exported
    # BERT graphs (Min(max_positions, sequence)) and, when it fails, dumps files into the working
    # directory; ONNX shape inference and the graph optimisation still run.
    quant_pre_process(str(src), str(out), skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=True)
    return out


def quantize_dynamic(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    *,
    weight_type: str = "qint8",
    per_channel: bool = False,
    reduce_range: bool = False,
    op_types: Iterable[str] | None = None,
    preprocess: bool = True,
    extra_options: Mapping[str, object] | None = None,
) -> pathlib.Path:
    """Dynamic int8 quantisation of ``src`` into ``dst``; returns ``dst``.

    Args:
        weight_type: ``"qint8"`` (default) or ``"quint8"``.
        per_channel: per-output-channel weight scales (more accurate, a little slower).
        reduce_range: 7-bit weights, for x86 CPUs without VNNI.
        op_types: operator types to quantise (default: all that ONNX Runtime supports).
        preprocess: run ONNX Runtime's quantisation pre-processing first.
        extra_options: passed to onnxruntime (e.g. ``{"MatMulConstBOnly": True}``).
    """
    from onnxruntime.quantization import quantize_dynamic as _ort_quantize_dynamic

    src_p, dst_p = _check_paths(src, dst)
    wtype = _quant_type(weight_type, "weight_type")
    with tempfile.TemporaryDirectory() as tmp:
        model_in = _preprocessed(src_p, pathlib.Path(tmp)) if preprocess else src_p
        _ort_quantize_dynamic(
            str(model_in),
            str(dst_p),
            op_types_to_quantize=list(op_types) if op_types is not None else None,
            per_channel=bool(per_channel),
            reduce_range=bool(reduce_range),
            weight_type=wtype,
            extra_options=dict(extra_options or {}),
        )
    return dst_p


class _Reader:
    """onnxruntime CalibrationDataReader over a list of input dicts."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def _check_calibration(
    calibration: Iterable[Mapping[str, np.ndarray]], input_names: list[str]
) -> list[dict[str, np.ndarray]]:
    batches: list[dict[str, np.ndarray]] = []
    for i, batch in enumerate(calibration):
        if not isinstance(batch, Mapping):
            raise EdgekdValueError(f"calibration batch {i} must be a dict input name -> array, got {type(batch).__name__}")
        missing = sorted(set(input_names) - set(batch))
        extra = sorted(set(batch) - set(input_names))
        if missing or extra:
            raise EdgekdValueError(
                f"calibration batch {i}: inputs must be {sorted(input_names)}; missing {missing}, unexpected {extra}"
            )
        batches.append({k: np.asarray(v) for k, v in batch.items()})
    if not batches:
        raise EdgekdValueError("calibration is empty: static quantisation needs at least one batch")
    return batches


def quantize_static(
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    calibration: Iterable[Mapping[str, np.ndarray]],
    *,
    method: str = "minmax",
    activation_type: str = "quint8",
    weight_type: str = "qint8",
    per_channel: bool = False,
    reduce_range: bool = False,
    op_types: Iterable[str] | None = None,
    preprocess: bool = True,
    extra_options: Mapping[str, object] | None = None,
) -> pathlib.Path:
    """Static int8 quantisation in QDQ format, calibrated on ``calibration``; returns ``dst``.

    Args:
        calibration: dicts mapping every model input name to a numpy array (one dict per batch).
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"`` range calibration.
        activation_type: ``"quint8"`` (default, x86) or ``"qint8"`` (symmetric, ARM).
        weight_type: ``"qint8"`` (default) or ``"quint8"``.
        per_channel, reduce_range, op_types, preprocess, extra_options: as in :func:`quantize_dynamic`.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat
    from onnxruntime.quantization import quantize_static as _ort_quantize_static

    src_p, dst_p = _check_paths(src, dst)
    if method not in CALIBRATION_METHODS:
        raise EdgekdValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    atype = _quant_type(activation_type, "activation_type")
    wtype = _quant_type(weight_type, "weight_type")
    graph = onnx.load(str(src_p), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    input_names = [i.name for i in graph.input if i.name not in initializers]
    batches = _check_calibration(calibration, input_names)
    calib = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with tempfile.TemporaryDirectory() as tmp:
        model_in = _preprocessed(src_p, pathlib.Path(tmp)) if preprocess else src_p
        _ort_quantize_static(
            str(model_in),
            str(dst_p),
            _Reader(batches),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types is not None else None,
            per_channel=bool(per_channel),
            reduce_range=bool(reduce_range),
            activation_type=atype,
            weight_type=wtype,
            calibrate_method=calib,
            extra_options=dict(extra_options or {}),
        )
    return dst_p
