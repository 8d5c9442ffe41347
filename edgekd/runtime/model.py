"""``Bundle``: load a verified edgekd bundle and classify texts with onnxruntime (no torch)."""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edgekd.errors import BundleError, EdgekdValueError
from edgekd.runtime.bundle import read_and_verify, safe_extract_zip
from edgekd.runtime.cpu import cpu_features, has_int8_dot_product, host_target, normalize_target
from edgekd.runtime.preprocess import Preprocessor, softmax, word_explanations

PRECISIONS = ("int8", "fp32")


@dataclass
class Predictions:
    """Result of :meth:`Bundle.predict` for ``n`` texts.

    ``labels``: label names; ``label_ids``: ``(n,)`` int; ``probabilities``: ``(n, classes)``;
    ``explanations``: per text a list of ``(word, weight)`` from the model's attention (``None``
    when the model has no attention output); ``empty``: texts that had no token (see
    :class:`edgekd.runtime.preprocess.Preprocessor`); ``logits``: raw model outputs.
    """

    labels: list[str]
    label_ids: np.ndarray
    probabilities: np.ndarray
    explanations: list[list[tuple[str, float]]] | None
    empty: np.ndarray
    logits: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.labels)


def select_variant(manifest: dict[str, Any], target: str = "auto", precision: str = "auto",
                   features: frozenset[str] | None = None) -> dict[str, Any]:
    """Pick the variant of ``manifest`` for ``target`` (``"auto"``: this machine) and
    ``precision`` (``"auto"`` prefers int8, then fp32). Among int8 variants, the ones whose
    ``requires`` CPU features are all present win, most specific first."""
    variants = manifest["variants"]
    have = sorted({v["target"] for v in variants})
    if target == "auto":
        tgt = host_target()
        if features is None:
            features = cpu_features()
    else:
        try:
            tgt = normalize_target(target)
        except EdgekdValueError as exc:
            raise BundleError(f"target: unknown target {target!r}; this bundle has {have}") from exc
        if features is None:
            features = cpu_features() if tgt == host_target() else frozenset()
    if has_int8_dot_product(tgt, frozenset(features)):
        features = frozenset(features) | {"int8_dot"}  # virtual feature: VNNI / asimddp
    if tgt not in have:
        raise BundleError(f"target: the bundle has no variant for target {tgt!r}; it has {have}")
    if precision not in ("auto",) + PRECISIONS:
        raise EdgekdValueError(f"precision: expected 'auto', 'int8' or 'fp32', got {precision!r}")
    order = PRECISIONS if precision == "auto" else (precision,)
    for prec in order:
        cands = [v for v in variants if v["target"] == tgt and v["precision"] == prec
                 and set(v.get("requires", [])) <= set(features)]
        if cands:
            return max(cands, key=lambda v: len(v.get("requires", [])))
    raise BundleError(f"precision: the bundle has no {precision} variant for {tgt!r} usable on this CPU")


MODEL_FORMATS = ("onnx", "ort")


def variant_in_format(variant: dict[str, Any], format: str = "onnx") -> dict[str, Any]:
    """``variant`` as loaded in ``format``: ``"onnx"`` (its ``file``) or ``"ort"`` (its ORT-format
    copy, ``variant["ort"]["file"]``, written by ``compile --ort``); ``file`` then names that copy."""
    if format == "onnx":
        return variant
    if format != "ort":
        raise EdgekdValueError(f"format: expected one of {list(MODEL_FORMATS)}, got {format!r}")
    ort = variant.get("ort")
    if not isinstance(ort, dict) or not ort.get("file"):
        raise BundleError(f"format: variant {variant.get('id')!r} has no ORT-format copy (compile with --ort)")
    return {**variant, "file": ort["file"], "format": "ort", "onnx_file": variant["file"]}


class Bundle:
    """A loaded bundle: ``Bundle.load(path)`` then ``predict(texts)``. Thread-safe: onnxruntime
    sessions and tokenizers may be shared by threads; nothing here mutates after loading."""

    def __init__(self, root: pathlib.Path, manifest: dict[str, Any], variant: dict[str, Any],
                 threads: int | None, source: pathlib.Path, tmpdir: str | None):
        import onnxruntime as ort

        self.root, self.manifest, self.variant, self.source = root, manifest, variant, source
        self._tmpdir = tmpdir
        if tmpdir is not None:
            self._finalizer = weakref.finalize(self, shutil.rmtree, tmpdir, True)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise EdgekdValueError(f"threads: expected a positive int or None, got {threads!r}")
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.threads = threads
        self.session = ort.InferenceSession(str(root / variant["file"]), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.output_names:
            raise BundleError(f"bundle: model {variant['file']} has no 'logits' output ({self.output_names})")
        pre = manifest["preprocessing"]
        self.preprocessor = Preprocessor(str(root / pre["tokenizer"]), pre, self.input_names)
        self._min_length = self.preprocessor.min_length
        self.label_names: list[str] = list(manifest["label_names"])

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike, target: str = "auto", precision: str = "auto",
             threads: int | None = None, format: str = "onnx") -> "Bundle":
        """Verify and load a bundle directory or ``.zip``; see :func:`select_variant` for
        ``target``/``precision``; ``format="ort"`` runs the variant's ORT-format copy
        (:func:`variant_in_format`). Raises :class:`edgekd.errors.BundleError` on any integrity problem."""
        if format not in MODEL_FORMATS:
            raise EdgekdValueError(f"format: expected one of {list(MODEL_FORMATS)}, got {format!r}")
        path = pathlib.Path(path)
        tmpdir = None
        if path.is_dir():
            root = path
        elif path.is_file():
            tmpdir = tempfile.mkdtemp(prefix="edgekd-bundle-")
            try:
                safe_extract_zip(path, tmpdir)
            except BaseException:
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise
            root = pathlib.Path(tmpdir)
        else:
            raise BundleError(f"bundle: {path} does not exist")
        try:
            manifest = read_and_verify(root)
            variant = variant_in_format(select_variant(manifest, target, precision), format)
            return cls(root, manifest, variant, threads, path, tmpdir)
        except BaseException:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise

    # ------------------------------------------------------------------------------ inference
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on prepared feeds; returns every output by name. Feeds shorter than the
        manifest's ``preprocessing.min_length`` (token-pruned models) are refused: pad them first
        (``bundle.preprocessor`` does)."""
        if self._min_length > 1:
            ids = feeds.get("input_ids")
            if ids is not None and np.ndim(ids) == 2 and np.shape(ids)[1] < self._min_length:
                raise EdgekdValueError(
                    f"feeds: sequence length {np.shape(ids)[1]} is below this bundle's min_length {self._min_length} "
                    f"(a token-pruned model); post-pad input_ids/attention_mask with pad id and mask 0 to at least "
                    f"{self._min_length} tokens, as Bundle.preprocessor does")
        outs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outs))

    def predict(self, texts: str | Sequence[str], explain: bool = True) -> Predictions:
        """Classify ``texts`` (one string or a list). Long texts are truncated to the manifest's
        ``max_length`` tokens; empty texts are flagged in ``Predictions.empty``."""
        batch = self.preprocessor(texts)
        out = self.run(batch.feeds)
        logits = np.asarray(out["logits"], dtype=np.float32)
        probs = softmax(logits.astype(np.float64)).astype(np.float32)
        ids = probs.argmax(axis=-1)
        explanations = None
        if explain and "attention" in out:
            texts_l = [texts] if isinstance(texts, str) else list(texts)
            att = out["attention"]
            explanations = [word_explanations(t, enc, att[k]) for k, (t, enc) in enumerate(zip(texts_l, batch.encodings))]
        return Predictions(labels=[self.label_names[i] for i in ids], label_ids=ids, probabilities=probs,
                           explanations=explanations, empty=batch.empty, logits=logits)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of what this variant needs: its model file plus the tokenizer."""
        files = self.manifest["files"]
        return int(files[self.variant["file"]]["size"] + files[self.manifest["preprocessing"]["tokenizer"]]["size"])

    def __repr__(self) -> str:
        return f"Bundle({str(self.source)!r}, variant={self.variant['id']!r}, labels={self.label_names})"


def load(path: str | os.PathLike, target: str = "auto", precision: str = "auto", threads: int | None = None,
         format: str = "onnx") -> Bundle:
    """Shorthand for :meth:`Bundle.load`."""
    return Bundle.load(path, target=target, precision=precision, threads=threads, format=format)


__all__ = ["Bundle", "Predictions", "load", "select_variant", "has_int8_dot_product"]
