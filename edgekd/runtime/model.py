"""``Bundle``: load a verified edgekd bundle and classify texts with onnxruntime (no torch)."""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from edgekd.errors import BundleError, EdgekdValueError
from edgekd.runtime.archive import BundleLimits
from edgekd.runtime.bundle import open_bundle
from edgekd.runtime.cpu import cpu_features, has_int8_dot_product, host_target, normalize_target
from edgekd.runtime.manifest import GENERATIVE_TASK
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
    if manifest.get("task") == GENERATIVE_TASK:
        raise BundleError("bundle: this is a generative (text-generation) bundle; load it with "
                          "edgekd.runtime.GenerativeBundle or run `edgekd generate BUNDLE PROMPT`")
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
                 threads: int | None, source: pathlib.Path, tmpdir: Any = None):
        import onnxruntime as ort

        self.root, self.manifest, self.variant, self.source = root, manifest, variant, source
        self._tmpdir = tmpdir  # an archive.TempDir (removed by its creating process only) or None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise EdgekdValueError(f"threads: expected a positive int or None, got {threads!r}")
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.threads = threads
        try:
            self.session = ort.InferenceSession(str(root / variant["file"]), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a model it cannot load
            raise BundleError(f"bundle: onnxruntime cannot load {variant['file']}: {str(exc)[:500]}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "logits" not in self.output_names:
            raise BundleError(f"bundle: model {variant['file']} has no 'logits' output ({self.output_names})")
        self.label_names: list[str] = list(manifest["label_names"])
        shape = self.session.get_outputs()[self.output_names.index("logits")].shape
        self._num_classes = shape[-1] if shape and isinstance(shape[-1], int) else None
        if self._num_classes is not None and self._num_classes != len(self.label_names):
            raise BundleError(f"manifest: label_names has {len(self.label_names)} names but the model "
                              f"{variant['file']} outputs {self._num_classes} classes")
        pre = manifest["preprocessing"]
        self.preprocessor = Preprocessor(str(root / pre["tokenizer"]), pre, self.input_names)
        self._min_length = self.preprocessor.min_length

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike, target: str = "auto", precision: str = "auto",
             threads: int | None = None, *, trusted_keys: Iterable[Any] | None = None,
             limits: BundleLimits | None = None, verify: str = "all", format: str = "onnx") -> "Bundle":
        """Verify and load a bundle directory or ``.zip``; see :func:`select_variant` for
        ``target``/``precision``. ``trusted_keys``: ed25519 public keys (PEM paths, raw bytes or
        key objects); when given, an unsigned bundle or one signed by another key is refused.
        ``limits``: :class:`edgekd.runtime.archive.BundleLimits` for zips. ``verify``: ``"all"``
        (every listed file is hash-checked, by streaming) or ``"selected"`` (only the files of the
        chosen variant). A zip is checked before anything is written and only the chosen
        variant is extracted. ``format="ort"`` runs the variant's ORT-format copy instead of its
        ONNX file (:func:`variant_in_format`). Raises :class:`edgekd.errors.BundleError` on any
        integrity problem."""
        if format not in MODEL_FORMATS:
            raise EdgekdValueError(f"format: expected one of {list(MODEL_FORMATS)}, got {format!r}")
        path = pathlib.Path(path)
        root, manifest, variant, tmp = open_bundle(
            path, lambda m: variant_in_format(select_variant(m, target, precision), format), trusted_keys=trusted_keys,
            limits=limits, verify=verify)
        try:
            return cls(root, manifest, variant, threads, path, tmp)
        except BaseException:
            if tmp is not None:
                tmp.cleanup()
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
        """Classify ``texts``: one string (one text) or any other iterable of strings, read once
        (the rules, surrogates included: :func:`edgekd.runtime.preprocess.validate_texts`). Long
        texts are truncated to the manifest's ``max_length`` tokens; empty texts are flagged in
        ``Predictions.empty``."""
        batch = self.preprocessor(texts)
        out = self.run(batch.feeds)
        logits = np.asarray(out["logits"], dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] != len(batch.texts) or logits.shape[1] != len(self.label_names):
            raise BundleError(f"bundle: the model returned logits of shape {logits.shape} for {len(batch.texts)} "
                              f"texts and {len(self.label_names)} label_names")
        probs = softmax(logits.astype(np.float64)).astype(np.float32)
        ids = probs.argmax(axis=-1)
        explanations = None
        if explain and "attention" in out:
            att = out["attention"]
            explanations = [word_explanations(t, enc, att[k]) for k, (t, enc) in enumerate(zip(batch.texts, batch.encodings))]
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
         **kwargs: Any) -> Bundle:
    """Shorthand for :meth:`Bundle.load` (same keyword arguments)."""
    return Bundle.load(path, target=target, precision=precision, threads=threads, **kwargs)


__all__ = ["Bundle", "Predictions", "load", "select_variant", "has_int8_dot_product"]
