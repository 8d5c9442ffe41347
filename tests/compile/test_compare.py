"""compile_and_compare on already-compiled bundles: benches every variant and writes the table."""
from __future__ import annotations

import json

from factories import LABELS, TEXTS
from edgekd.compile import compile_and_compare


def test_compile_and_compare(teacher_bundle, student_bundle, tmp_path):
    rep = compile_and_compare(teacher_bundle, {"student": student_bundle}, tmp_path, eval_texts=TEXTS,
                              eval_labels=LABELS, bench_texts=8, min_time=0.01, arm64=False, progress=False)
    rows = rep["results"]["x86_64"]
    assert [(r["name"], r["precision"]) for r in rows] == [
        ("teacher", "fp32"), ("teacher", "int8"), ("student", "fp32"), ("student", "int8")]
    for r in rows:
        assert r["latency"]["1"]["p50_ms"] > 0 and 0 <= r["accuracy"] <= 1
        assert r["accuracy_measured_on"] == f"{len(TEXTS)} labelled texts"
    md = (tmp_path / "compare.md").read_text()
    assert "| teacher | x86_64-fp32 |" in md and "| student | x86_64-int8" in md and "1.0x" in md
    assert json.loads((tmp_path / "compare.json").read_text())["x86_64"][0]["variant"] == "x86_64-fp32"

