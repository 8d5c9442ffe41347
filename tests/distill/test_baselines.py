"""TF-IDF baselines: selected on the dev split only, exported to ONNX, timed by onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

from edgekd.data.datasets import TextDataset
from edgekd.distill.baselines import export_onnx, fit_tfidf, onnx_predict, run_baselines, time_onnx
from edgekd.distill.report import format_table
from edgekd.errors import EdgekdValueError

NAMES = ["bearish", "bullish", "neutral"]
CUES = {0: ["falls", "cuts", "misses", "downgrade"], 1: ["beats", "raises", "upgrade", "soars"],
        2: ["announces", "schedules", "files", "reports"]}


def _data(n: int, seed: int) -> TextDataset:
    rng = np.random.default_rng(seed)
    filler = ["stock", "shares", "company", "quarter", "market", "Café", "$AAPL", "today", "update", "news"]
    texts, labels = [], []
    for i in range(n):
        y = i % 3
        words = list(rng.choice(filler, size=4)) + [str(rng.choice(CUES[y]))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return TextDataset(texts, labels, NAMES, source=f"synthetic-{seed}")


def test_fit_selects_on_dev_and_the_onnx_graph_agrees(tmp_path):
    tr, dev, va = _data(120, 0), _data(30, 1), _data(45, 2)
    fit = fit_tfidf("lr", tr.texts, tr.labels, dev.texts, dev.labels)
    assert len(fit.grid) == 8 and round(fit.dev_macro_f1, 4) == max(g["dev_macro_f1"] for g in fit.grid)
    assert fit.dev_macro_f1 > 0.9  # the cue words separate the classes
    n_feat = len(fit.pipeline.named_steps["tfidf"].vocabulary_)
    assert fit.parameters == 3 * n_feat + 3 + n_feat
    path = export_onnx(fit, tmp_path / "lr" / "model.onnx")
    np.testing.assert_array_equal(onnx_predict(path, va.texts), fit.pipeline.predict(va.texts))
    svm = fit_tfidf("svm", tr.texts, tr.labels, dev.texts, dev.labels)
    np.testing.assert_array_equal(onnx_predict(export_onnx(svm, tmp_path / "svm.onnx"), va.texts),
                                  svm.pipeline.predict(va.texts))
    t = time_onnx(path, va.texts[:5], min_time=0.01, batches=(1, 8))
    assert set(t["latency"]) == {"1", "8"} and t["latency"]["8"]["iters"] >= 10
    assert 0 < t["latency"]["1"]["p50_ms"] and t["throughput_per_s"]["8"] > 0


def test_selection_never_sees_the_validation_split():
    """Same train and dev, two different validation sets: the same model is chosen."""
    tr, dev = _data(90, 0), _data(30, 1)
    a = fit_tfidf("lr", tr.texts, tr.labels, dev.texts, dev.labels)
    b = fit_tfidf("lr", tr.texts, tr.labels, dev.texts, dev.labels)
    assert (a.C, a.class_weight, a.grid) == (b.C, b.class_weight, b.grid)
    flipped = fit_tfidf("lr", tr.texts, tr.labels, dev.texts, [(y + 1) % 3 for y in dev.labels])
    assert flipped.dev_macro_f1 < 0.2  # the dev labels drive the score it is selected on


def test_bad_inputs():
    tr = _data(12, 0)
    with pytest.raises(EdgekdValueError, match="kind must be one of"):
        fit_tfidf("rf", tr.texts, tr.labels, tr.texts, tr.labels)
    with pytest.raises(EdgekdValueError, match="needs training and dev texts"):
        fit_tfidf("lr", tr.texts, tr.labels, [], [])
    with pytest.raises(EdgekdValueError, match="single class"):
        fit_tfidf("lr", tr.texts, [0] * 12, tr.texts, tr.labels)


def test_run_baselines_rows_in_the_table(tmp_path):
    tr, dev, va = _data(120, 0), _data(30, 1), _data(45, 2)
    seen = []
    rows = run_baselines(tr, dev, va, tmp_path, min_time=0.01, log=seen.append)
    assert rows[0]["method"] == "tfidf_lr" and [r["method"] for r in rows][1:] in ([], ["tfidf_svm"])
    r = rows[0]
    assert r["onnx_agreement"] == 1.0 and r["latency_b1_ms"] > 0 and r["size_mb"] > 0
    assert r["bench"]["accuracy"] == pytest.approx(r["accuracy"]) and r["bench"]["latency"]["1"]["p50_ms"] > 0
    assert r["selection"]["dev_macro_f1"] == max(g["dev_macro_f1"] for g in r["selection"]["grid"])
    assert (tmp_path / "tfidf_lr" / "model.onnx").is_file() and seen[0]["baseline"] == "tfidf_lr"
    rep = {"rows": [{k: v for k, v in x.items() if k != "bench"} for x in rows], "top_k": 5}
    table = format_table(rep)
    assert "| baseline: TF-IDF 1-2 grams + logistic regression |" in table and "batch-1 ms (onnxruntime)" in table
