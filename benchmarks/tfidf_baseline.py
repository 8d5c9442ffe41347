"""The baseline a user would pick instead of a compressed transformer: TF-IDF (word 1-2 grams) +
logistic regression / linear SVM (edgekd.distill.baselines), C and class weighting selected on a
stratified 10 % dev split carved from the training file; the evaluation split is scored once.

    python benchmarks/tfidf_baseline.py tfns   # TFNS: sent_train.csv -> sent_valid.csv
Prints a markdown table (accuracy, macro-F1, size, ONNX batch-1 latency) for the results files.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from edgekd.data.datasets import TextDataset
from edgekd.data.readers import read_texts
from edgekd.distill.baselines import export_onnx, fit_tfidf, onnx_predict, time_onnx
from edgekd.metrics import accuracy, macro_f1

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["tfns"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train_t, train_y = read_texts(DATA / "tfns" / "sent_train.csv")
    test_t, test_y = read_texts(DATA / "tfns" / "sent_valid.csv")
    full = TextDataset(list(train_t), [int(v) for v in train_y], ["bearish", "bullish", "neutral"])
    tr, dv = full.stratified_split(0.1, seed=args.seed)  # the dev split of the distillation protocol
    print(f"train {len(tr)}, dev {len(dv)}, evaluation {len(test_t)} (TFNS sent_valid.csv)")
    print("| model | accuracy | macro-F1 | parameters | ONNX MB | b1 latency ms (ONNX, 1 thread) | C, class weight (dev) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("lr", "svm"):
            fit = fit_tfidf(kind, tr.texts, tr.labels, dv.texts, dv.labels, seed=args.seed)
            pred = fit.pipeline.predict(test_t)
            path = export_onnx(fit, Path(tmp) / f"{kind}.onnx")
            agree = float(np.mean(onnx_predict(path, test_t) == pred))
            t = time_onnx(path, test_t[:256])
            ms = t["latency"]["1"]["p50_ms"]
            print(f"| {fit.name} | {accuracy(test_y, pred):.3f} | {macro_f1(test_y, pred):.3f} | {fit.parameters:,} | "
                  f"{path.stat().st_size / 1e6:.2f} | {ms:.3f} | {fit.C}, {fit.class_weight} "
                  f"(ONNX agrees with sklearn on {agree:.1%}) |")


if __name__ == "__main__":
    main()
