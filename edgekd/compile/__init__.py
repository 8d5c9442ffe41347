"""Compile trained models into verified ONNX bundles for x86-64 and ARM64.

>>> from edgekd.compile import compile_student, compile_teacher
>>> compile_student("runs/student", "bundles/student", tokenizer="runs/student/tokenizer.json",
...                 eval_texts=texts, eval_labels=labels)
>>> compile_teacher("runs/teacher", "bundles/teacher", eval_texts=texts, eval_labels=labels)

Each call exports the model (:mod:`edgekd.compile.specs`), builds per-target fp32/int8 variants
(:mod:`edgekd.compile.variants`), checks parity of every variant on the held-out slice against
the PyTorch model (fp32 must be within the spec's tolerance, else :class:`ParityError`) and
writes a bundle directory plus the same as ``.zip`` (format: :mod:`edgekd.runtime.bundle`).
"""
from __future__ import annotations

from edgekd.compile.pipeline import DEFAULT_PRECISIONS, DEFAULT_TARGETS, ParityError, compile_model
from edgekd.compile.specs import (ExportSpec, InputSpec, detect_model_kind, get_export_spec,
                                  register_export_spec, registered_kinds)


def compile_student(model_dir, out, *, eval_texts, eval_labels=None, tokenizer=None, **kwargs):
    """Compile a saved BiLSTM-attention student (``config.json`` + ``model.safetensors``; the
    word tokenizer from ``tokenizer`` or ``model_dir/tokenizer.json``). See :func:`compile_model`."""
    return compile_model("bilstm_attention", model_dir, out, eval_texts=eval_texts, eval_labels=eval_labels,
                         tokenizer=tokenizer, **kwargs)


def compile_teacher(model_dir, out, *, eval_texts, eval_labels=None, tokenizer=None, **kwargs):
    """Compile a Hugging Face ``*ForSequenceClassification`` directory. See :func:`compile_model`."""
    return compile_model("hf_sequence_classification", model_dir, out, eval_texts=eval_texts,
                         eval_labels=eval_labels, tokenizer=tokenizer, **kwargs)


def compile_and_compare(*args, **kwargs):
    """Compile teacher and students, benchmark them and return the comparison table; see
    :func:`edgekd.compile.report.compile_and_compare`."""
    from edgekd.compile.report import compile_and_compare as _impl

    return _impl(*args, **kwargs)


__all__ = ["compile_model", "compile_student", "compile_teacher", "compile_and_compare", "ParityError",
           "ExportSpec", "InputSpec", "register_export_spec", "get_export_spec", "registered_kinds", "detect_model_kind",
           "DEFAULT_TARGETS", "DEFAULT_PRECISIONS"]
