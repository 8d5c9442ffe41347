"""The baselines a user would pick instead of distilling: TF-IDF (word 1-2 grams) + a linear model.

Both are trained on the students' training texts and selected on the dev split only (a small grid
of ``C`` x class weighting, best dev macro-F1; ties go to the smaller ``C``): logistic regression
(``tfidf_lr``, always reported) and a linear SVM (``tfidf_svm``, reported when it beats the logistic
regression on the dev split). The chosen model is exported to ONNX with ``skl2onnx`` and timed at
batch 1 (and 32) by onnxruntime with the same timing loop as the compiled bundles
(:mod:`edgekd.runtime.bench`); its size is the ONNX file's. Accuracy and macro-F1 are scikit-learn's
on the validation split; ``onnx_agreement`` is the share of validation texts where the ONNX graph
predicts the same class (its tokenizer is onnxruntime's regex tokenizer, not Python's, so a few
texts differ).

>>> from edgekd.distill.baselines import fit_tfidf     # doctest: +SKIP
>>> fit = fit_tfidf("lr", train.texts, train.labels, dev.texts, dev.labels)   # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekd.errors import EdgekdValueError

BASELINES = {"lr": "TF-IDF 1-2 grams + logistic regression", "svm": "TF-IDF 1-2 grams + linear SVM"}
# inverse regularisation strengths tried on the dev split (LinearSVC's hinge loss wants ~1/16 of
# logistic regression's C for the same fit on TF-IDF features: the two grids cover the same range)
C_GRID = {"lr": (1.0, 4.0, 16.0, 64.0), "svm": (0.0625, 0.25, 1.0, 4.0)}
CLASS_WEIGHTS = (None, "balanced")


@dataclass
class BaselineFit:
    """A TF-IDF baseline selected on the dev split."""

    kind: str
    pipeline: Any  # sklearn Pipeline (tfidf -> clf)
    C: float
    class_weight: str | None
    dev_macro_f1: float
    grid: list[dict] = field(default_factory=list)  # every (C, class_weight, dev macro-F1) tried
    fit_seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"tfidf_{self.kind}"

    @property
    def description(self) -> str:
        return BASELINES[self.kind]

    @property
    def parameters(self) -> int:
        clf = self.pipeline.named_steps["clf"]
        return int(clf.coef_.size + clf.intercept_.size + len(self.pipeline.named_steps["tfidf"].idf_))


def _classifier(kind: str, C: float, class_weight: str | None, seed: int):
    if kind == "lr":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, class_weight=class_weight, max_iter=3000, random_state=seed)
    from sklearn.svm import LinearSVC

    return LinearSVC(C=C, class_weight=class_weight, random_state=seed)


def fit_tfidf(kind: str, train_texts: Sequence[str], train_labels: Sequence[int], dev_texts: Sequence[str],
              dev_labels: Sequence[int], *, seed: int = 0, grid: Sequence[float] | None = None) -> BaselineFit:
    """Fit TF-IDF (word 1-2 grams, sublinear tf) + ``kind`` (``"lr"`` or ``"svm"``) on the training
    texts for every ``C`` of ``grid`` (default :data:`C_GRID`) and class weighting; keep the best on
    the dev split's macro-F1."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline

    from edgekd.metrics import macro_f1

    if kind not in BASELINES:
        raise EdgekdValueError(f"fit_tfidf: kind must be one of {sorted(BASELINES)}, got {kind!r}")
    if not len(train_texts) or not len(dev_texts):
        raise EdgekdValueError("fit_tfidf: needs training and dev texts (set data.dev_fraction > 0)")
    if len(set(int(y) for y in train_labels)) < 2:
        raise EdgekdValueError("fit_tfidf: the training texts hold a single class")
    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    xtr = vec.fit_transform(list(train_texts))
    xdev = vec.transform(list(dev_texts))
    ytr, ydev = np.asarray(train_labels, dtype=np.int64), np.asarray(dev_labels, dtype=np.int64)
    tried, best = [], None
    for C in grid or C_GRID[kind]:
        for cw in CLASS_WEIGHTS:
            clf = _classifier(kind, float(C), cw, seed).fit(xtr, ytr)
            f1 = macro_f1(ydev, clf.predict(xdev), num_classes=int(max(ytr.max(), ydev.max())) + 1)
            tried.append({"C": float(C), "class_weight": cw, "dev_macro_f1": round(f1, 4)})
            if best is None or f1 > best[0]:
                best = (f1, float(C), cw, clf)
    f1, C, cw, clf = best
    pipe = Pipeline([("tfidf", vec), ("clf", clf)])
    return BaselineFit(kind, pipe, C, cw, f1, tried, round(time.perf_counter() - t0, 1))


def export_onnx(fit: BaselineFit, path: str | Path) -> Path:
    """The fitted pipeline as an ONNX graph (string input ``text`` of shape [N, 1]; outputs the class
    and, for logistic regression, the probabilities)."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    clf = fit.pipeline.named_steps["clf"]
    opts = {id(clf): {"zipmap": False} if fit.kind == "lr" else {"raw_scores": True}}
    model = convert_sklearn(fit.pipeline, initial_types=[("text", StringTensorType([None, 1]))], options=opts,
                            target_opset=17)
    for node in model.graph.node:
        # onnxruntime's StringNormalizer builds the en_US.UTF-8 locale by default, which minimal
        # systems lack; lower-casing UTF-8 text needs only C.UTF-8
        if node.op_type == "StringNormalizer" and not any(a.name == "locale" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("locale", "C.UTF-8"))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(model.SerializeToString())
    return p


def time_onnx(path: str | Path, texts: Sequence[str], *, threads: int | None = 1, min_time: float = 1.0,
              batches: Sequence[int] = (1, 32)) -> dict[str, Any]:
    """Latency of the ONNX graph with onnxruntime, in the schema of :func:`edgekd.runtime.bench.bench`
    (``latency[str(batch)]`` percentiles, ``throughput_per_s``), with its timing loop."""
    import onnxruntime as ort

    from edgekd.runtime.bench import _percentiles, _time_loop

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = so.inter_op_num_threads = int(threads)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    texts = list(texts)
    if not texts:
        raise EdgekdValueError("time_onnx: no texts")
    lat, thr = {}, {}
    for b in batches:
        pool = texts * (b // len(texts) + 1)  # at least one full batch
        chunks = [np.array(pool[i: i + b], dtype=object).reshape(-1, 1) for i in range(0, len(pool) - b + 1, b)]
        run = lambda x: sess.run(None, {"text": x})  # noqa: E731
        for c in chunks[:3]:
            run(c)  # warm-up
        st = _percentiles(_time_loop(run, chunks, min_time, 10, 2000))
        lat[str(b)] = st
        thr[str(b)] = b / (st["p50_ms"] / 1e3)
    return {"latency": lat, "throughput_per_s": thr, "threads": threads, "onnxruntime": ort.__version__}


def onnx_predict(path: str | Path, texts: Sequence[str]) -> np.ndarray:
    """Class ids predicted by the ONNX graph."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"text": np.array(list(texts), dtype=object).reshape(-1, 1)})
    return np.asarray(out[0], dtype=np.int64).reshape(-1)


def run_baselines(train, dev, valid, out_dir: str | Path, *, seed: int = 0, min_time: float = 1.0,
                  log=None) -> list[dict[str, Any]]:
    """Fit both baselines on ``train`` (TextDatasets), select on ``dev``, score on ``valid``; export and
    time the reported ones (logistic regression, and the SVM when it wins on dev) under ``out_dir``.
    Returns one row per reported baseline (the report's row keys, plus ``latency_b1_ms``,
    ``onnx_agreement``, ``selection`` and the runtime result under ``bench``)."""
    from edgekd.metrics import classification_metrics

    fits = {k: fit_tfidf(k, train.texts, train.labels, dev.texts, dev.labels, seed=seed) for k in ("lr", "svm")}
    keep = ["lr"] + (["svm"] if fits["svm"].dev_macro_f1 > fits["lr"].dev_macro_f1 else [])
    rows = []
    for k in keep:
        fit = fits[k]
        t0 = time.perf_counter()
        pred = fit.pipeline.predict(list(valid.texts))
        m = classification_metrics(valid.labels, pred, valid.label_names)
        path = export_onnx(fit, Path(out_dir) / fit.name / "model.onnx")
        opred = onnx_predict(path, valid.texts)
        om = classification_metrics(valid.labels, opred, valid.label_names)
        agree = float(np.mean(opred == pred))
        bench = time_onnx(path, valid.texts[:256], min_time=min_time)
        row = {
            "method": fit.name, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "per_class": m["per_class"],
            "feature_agreement_attention": None, "sign_agreement_attention": None, "feature_agreement_ig": None,
            "sign_agreement_ig": None, "parameters": fit.parameters, "size_mb": round(path.stat().st_size / 2**20, 3),
            "best_epoch": 0, "train_seconds": fit.fit_seconds, "bundle_dir": str(path.parent),
            "latency_b1_ms": round(bench["latency"]["1"]["p50_ms"], 3), "onnx_agreement": round(agree, 4),
            "selection": {"C": fit.C, "class_weight": fit.class_weight, "dev_macro_f1": round(fit.dev_macro_f1, 4),
                          "grid": fit.grid, "other_dev_macro_f1": {o: round(f.dev_macro_f1, 4) for o, f in fits.items()}},
            "bench": {**bench, "name": fit.name, "variant": "fp32 (skl2onnx)", "target": "x86_64",
                      "precision": "fp32", "size_bytes": path.stat().st_size,
                      "accuracy": om["accuracy"], "macro_f1": om["macro_f1"],
                      "accuracy_measured_on": f"{len(valid)} labelled texts"},
        }
        if log is not None:
            log({"baseline": fit.name, "C": fit.C, "class_weight": fit.class_weight,
                 "dev_macro_f1": round(fit.dev_macro_f1, 4), "valid_macro_f1": round(m["macro_f1"], 4),
                 "latency_b1_ms": row["latency_b1_ms"], "onnx_agreement": row["onnx_agreement"],
                 "seconds": round(fit.fit_seconds + time.perf_counter() - t0, 1)})
        rows.append(row)
    return rows
