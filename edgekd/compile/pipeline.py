"""``compile_model``: export -> per-target variants -> parity on a held-out slice -> bundle (dir + zip)."""
from __future__ import annotations

import datetime as _dt
import pathlib
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np

from edgekd.errors import EdgekdError, EdgekdValueError
from edgekd.compile.specs import ExportSpec, detect_model_kind, get_export_spec
from edgekd.compile.variants import build_variant_files, copy_tokenizer, plan_variants

DEFAULT_TARGETS = ("x86_64", "arm64")
DEFAULT_PRECISIONS = ("fp32", "int8")
CALIBRATION_TEXTS = 512  # static int8: activation ranges from at most this many texts


class ParityError(EdgekdError):
    """The fp32 ONNX export disagrees with the PyTorch model beyond the spec's tolerance."""


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _session(path: pathlib.Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _check_graph_ops(path: pathlib.Path, allow_contrib: bool) -> dict[str, Any]:
    """List the graph's operator domains; an fp32 export may only hold default-domain ops."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    domains = sorted({n.domain or "ai.onnx" for n in model.graph.node})
    ops = sorted({f"{n.domain + '::' if n.domain else ''}{n.op_type}" for n in model.graph.node})
    bad = [d for d in domains if d not in ("ai.onnx",) + (("com.microsoft",) if allow_contrib else ())]
    if bad:
        raise ParityError(f"{path.name}: graph holds operators of domains {bad}: {ops}")
    opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {"ops": ops, "domains": domains, "opset": opset}


def _validate_eval(texts: Sequence[str] | None, labels: Sequence[int] | None, num_classes: int) -> tuple[list[str], np.ndarray | None]:
    if texts is None or isinstance(texts, str) or len(texts) == 0:
        raise EdgekdValueError("eval_texts: a non-empty list of held-out texts is required for the parity check")
    texts = list(texts)
    for k, t in enumerate(texts):
        if not isinstance(t, str):
            raise EdgekdValueError(f"eval_texts[{k}]: expected a string, got {type(t).__name__}")
    if labels is None:
        return texts, None
    y = np.asarray(list(labels))
    if y.shape != (len(texts),) or not np.issubdtype(y.dtype, np.integer):
        raise EdgekdValueError(f"eval_labels: expected {len(texts)} integer labels, got shape {y.shape} dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise EdgekdValueError(f"eval_labels: labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    return texts, y


def _metrics(logits: np.ndarray, ref: np.ndarray, y: np.ndarray | None, num_classes: int) -> dict[str, Any]:
    from edgekd.metrics import macro_f1

    pred, ref_pred = logits.argmax(-1), ref.argmax(-1)
    m: dict[str, Any] = {"max_abs_logit_diff": float(np.abs(logits - ref).max()),
                         "label_agreement": float((pred == ref_pred).mean())}
    if y is not None:
        m["accuracy"] = float((pred == y).mean())
        m["macro_f1"] = macro_f1(y, pred, num_classes)
        m["accuracy_delta"] = m["accuracy"] - float((ref_pred == y).mean())
        m["macro_f1_delta"] = m["macro_f1"] - macro_f1(y, ref_pred, num_classes)
    return m


def compile_model(
    model_kind: str,
    source: str | pathlib.Path,
    out: str | pathlib.Path,
    *,
    eval_texts: Sequence[str],
    eval_labels: Sequence[int] | None = None,
    tokenizer: str | pathlib.Path | None = None,
    max_length: int = 64,
    targets: Sequence[str] = DEFAULT_TARGETS,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    opset: int = 17,
    name: str | None = None,
    arm64_check: bool | str = "auto",
    arm64_slice: int = 64,
    make_zip: bool = True,
    ort_format: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    int8_scheme: str = "static",
    calibration_texts: Sequence[str] | None = None,
) -> pathlib.Path:
    """Compile a model into a bundle directory ``out`` (and ``out.zip``); returns the directory.

    ``model_kind``: a registered export spec (``"bilstm_attention"`` for the student,
    ``"hf_sequence_classification"`` for Hugging Face teachers and head-pruned BERTs,
    ``"token_pruned_bert"`` for token-pruned BERT / MiniLM classifiers), or ``"auto"`` to detect it
    from the directory (:func:`edgekd.compile.specs.detect_model_kind`). ``opset`` is raised to the
    spec's minimum when lower (18 for ``token_pruned_bert``). ``eval_texts``/``eval_labels``:
    the held-out slice every variant is checked on (labels optional: without them only logit
    parity and label agreement are stored). Raises :class:`ParityError` if the fp32 export is off
    by more than the spec's tolerance. ``arm64_check``: also run the arm64 variants under the
    emulator and compare with this machine (``"auto"``: when ``../shared/tools/arm64`` exists) on the
    first ``arm64_slice`` held-out texts. ``int8_scheme``: ``"static"`` (default: calibrated QDQ,
    a text's label does not depend on its batch) or ``"dynamic"`` (see :mod:`edgekd.compile.variants`).
    ``calibration_texts``: texts the static scheme calibrates activation ranges on (the first
    :data:`CALIBRATION_TEXTS`; training texts are best); default: the held-out slice, recorded as
    such in the manifest. ``ort_format``: also write an ORT-format copy of every variant and the
    per-target required-operators configs (:mod:`edgekd.compile.ort_format`).
    """
    from tqdm.auto import tqdm

    import onnxruntime as ort

    from edgekd import __version__
    from edgekd.runtime.bundle import BUNDLE_FORMAT, SCHEMA_VERSION, write_manifest, write_zip
    from edgekd.runtime.preprocess import Preprocessor

    if model_kind == "auto":
        model_kind = detect_model_kind(source)
    spec: ExportSpec = get_export_spec(model_kind)(source, tokenizer)
    if not isinstance(max_length, int) or max_length < 1:
        raise EdgekdValueError(f"max_length: expected a positive int, got {max_length!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 1:
        raise EdgekdValueError(f"opset: expected a positive int, got {opset!r}")
    opset = max(opset, spec.min_opset)
    labels_names = spec.label_names()
    texts, y = _validate_eval(eval_texts, eval_labels, len(labels_names))
    out = pathlib.Path(out)
    if out.exists():
        if not overwrite:
            raise EdgekdValueError(f"out: {out} exists; pass overwrite=True to replace it")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    plans = plan_variants(tuple(targets), tuple(precisions), spec.quantize_op_types, int8_scheme)
    if calibration_texts is not None:
        calibration_texts = _validate_eval(calibration_texts, None, len(labels_names))[0][:CALIBRATION_TEXTS]
    steps = tqdm(total=4 + len(plans), desc=f"compile {model_kind}", disable=not progress)

    out.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekd-export-") as tmp:
            raw = pathlib.Path(tmp) / "exported.onnx"
            spec.export(raw, opset)
            graph_info = _check_graph_ops(raw, allow_contrib=False)
            steps.update(1)
            # fp32 parity of the raw export on random post-padded inputs (lengths 1..seq)
            dummy = spec.dummy_inputs()
            sess = _session(raw)
            got = sess.run(["logits"], {i.name: dummy[i.name] for i in sess.get_inputs()})[0]
            diff = float(np.abs(got - spec.reference_logits(dummy)).max())
            if not diff <= spec.fp32_atol:
                raise ParityError(f"fp32 export parity broken on random inputs: max abs logit diff {diff:.3g} "
                                  f"> {spec.fp32_atol:g}")
            steps.update(1)
            pre = spec.preprocessing(max_length)
            calib_src = "calibration_texts" if calibration_texts is not None else "held-out slice (eval_texts)"
            calib = None
            if any(pl.quantization and pl.quantization["scheme"] == "static" for pl in plans):
                cprep = Preprocessor(str(spec.tokenizer_path), pre, [i.name for i in sess.get_inputs()])
                ctexts = list(calibration_texts if calibration_texts is not None else texts[:CALIBRATION_TEXTS])
                calib = [cprep(ctexts[sl]).feeds for sl in _batches(len(ctexts), 32)]
                for pl in plans:
                    if pl.quantization is not None:
                        pl.quantization["calibration"] = {"texts": len(ctexts), "source": calib_src}
            files = build_variant_files(raw, plans, out, calib)
            steps.update(1)
        copy_tokenizer(spec.tokenizer_path, out / "tokenizer.json")

        # held-out slice: reference logits once, then every distinct file
        sess0 = _session(out / files[plans[0].file_key()][0])
        input_names = [i.name for i in sess0.get_inputs()]
        prep = Preprocessor(str(out / "tokenizer.json"), pre, input_names)
        feeds_list = [prep(texts[s]).feeds for s in _batches(len(texts), 32)]
        ref = np.concatenate([spec.reference_logits(f) for f in feeds_list])
        steps.update(1)
        per_file: dict[str, dict[str, Any]] = {}
        from edgekd.runtime.cpu import cpu_features, has_int8_dot_product, host_target

        host_dot = has_int8_dot_product(host_target(), cpu_features())
        variants = []
        for plan in plans:
            key = plan.file_key()
            fname, opt = files[key]
            if key not in per_file:
                s = _session(out / fname)
                logits = np.concatenate([s.run(["logits"], f)[0] for f in feeds_list])
                per_file[key] = _metrics(logits, ref, y, len(labels_names))
                per_file[key]["graph"] = _check_graph_ops(out / fname, allow_contrib=True)
                if plan.quantization is not None and not plan.quantization["reduce_range"] and not host_dot:
                    per_file[key]["host_note"] = (
                        "measured on a host without int8 dot-product instructions, where u8s8 with full-range "
                        "weights saturates: these figures overstate the error on VNNI/ARM64 CPUs (see "
                        "parity.emulated_arm64 for the ARM64 run)")
                if plan.precision == "fp32" and not per_file[key]["max_abs_logit_diff"] <= spec.fp32_atol:
                    raise ParityError(f"fp32 parity broken on the held-out slice ({fname}): max abs logit diff "
                                      f"{per_file[key]['max_abs_logit_diff']:.3g} > {spec.fp32_atol:g}")
            m = dict(per_file[key])
            graph = m.pop("graph")
            variants.append({
                "id": plan.id, "target": plan.target, "precision": plan.precision, "file": fname,
                "requires": list(plan.requires), "optimization": opt, "quantization": plan.quantization,
                "operators": graph["ops"], "opset": graph["opset"],
                "parity": {**m, "slice_size": len(texts), "reference": f"PyTorch ({model_kind}) fp32",
                           "measured_on": "x86_64 host onnxruntime " + ort.__version__},
                "profiles": {},
            })
            steps.update(1)
        ort_table = None
        if ort_format:
            from edgekd.compile.ort_format import convert_variants_to_ort

            ort_table = convert_variants_to_ort(
                out, variants, lambda p: np.concatenate([_session(p).run(["logits"], f)[0] for f in feeds_list]),
                spec.fp32_atol)
        manifest = {
            "format": BUNDLE_FORMAT, "schema_version": SCHEMA_VERSION, "name": name or out.name,
            "task": "text-classification", "model_kind": model_kind, "label_names": labels_names,
            "inputs": [i.as_manifest() for i in spec.inputs if i.name in input_names],
            "outputs": list(spec.outputs), "explanations": spec.explanation_output,
            "preprocessing": pre, "opset": opset, "onnxruntime_version": ort.__version__,
            "edgekd_version": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": spec.describe(), "fp32_tolerance": spec.fp32_atol,
            "export_check": {"random_inputs_max_abs_logit_diff": diff, "graph": graph_info},
            "variants": variants,
        }
        if ort_table is not None:
            manifest["ort"] = ort_table
        write_manifest(out, manifest)
        steps.close()
        if arm64_check:
            from edgekd.compile.arm64 import arm64_available, check_arm64_bundle

            if arm64_check is True or (arm64_check == "auto" and arm64_available()):
                if any(p.target == "arm64" for p in plans):
                    n = min(len(texts), arm64_slice)
                    check_arm64_bundle(out, texts[:n], None if y is None else y[:n], record=True)
        if make_zip:
            write_zip(out, out.with_suffix(".zip"))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out
