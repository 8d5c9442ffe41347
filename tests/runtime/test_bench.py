"""The benchmark harness: bench JSON/markdown, --record into the manifest, compare table, CLI."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from factories import LABELS, TEXTS
from edgekd.cli import main
from edgekd.runtime import Bundle
from edgekd.runtime.bench import bench, compare_markdown, compare_rows, load_texts, record_profile


def test_bench_result(student_bundle):
    r = bench(student_bundle, precision="fp32", batches=[1, 8, 32], min_time=0.02, min_iters=3, warmup=1,
              texts=TEXTS, labels=LABELS)
    assert r["variant"] == "x86_64-fp32"
    for b in ("1", "8", "32"):
        s = r["latency"][b]
        assert 0 < s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["iters"] >= 3
        assert r["throughput_per_s"][b] > 0
    assert r["peak_rss_mb"] > 10 and r["size_bytes"] == Bundle.load(student_bundle, precision="fp32").size_bytes
    assert 0.0 <= r["accuracy"] <= 1.0 and r["accuracy_measured_on"] == "12 labelled texts"
    assert r["machine"]["target"] == "x86_64" and r["threads"]["inter_op_num_threads"] == 1


def test_record_profile_keeps_bundle_valid(student_bundle, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(student_bundle, d)
    z = tmp_path / "b.zip"
    shutil.copy(student_bundle.with_suffix(".zip"), z)
    for path in (d, z):
        r = bench(path, precision="int8", batches=[1], min_time=0.01, min_iters=2, warmup=1)
        record_profile(path, r)
        b = Bundle.load(path, precision="int8")  # checksums still verify
        prof = b.variant["profiles"]
        assert len(prof) == 1
        (key, p), = prof.items()
        assert key.startswith("x86_64:") and p["latency"]["1"]["p50_ms"] > 0


def test_compare_rows():
    base = {"name": "teacher", "variant": "x86_64-fp32", "target": "x86_64", "size_bytes": 100e6,
            "latency": {"1": {"p50_ms": 20.0}}, "throughput_per_s": {"32": 50.0}, "accuracy": 0.85, "macro_f1": 0.8,
            "instructions": {"instructions_per_inference": 1e9}}
    stu = {"name": "student", "variant": "x86_64-int8", "target": "x86_64", "size_bytes": 0.5e6,
           "latency": {"1": {"p50_ms": 0.5}}, "throughput_per_s": {"32": 5000.0}, "accuracy": 0.84, "macro_f1": 0.79,
           "instructions": {"instructions_per_inference": 1e7}}
    rows = compare_rows([base, stu])
    assert rows[1]["compression"] == pytest.approx(200.0) and rows[1]["speedup_b1"] == pytest.approx(40.0)
    assert rows[1]["instructions_ratio"] == pytest.approx(100.0)
    assert rows[1]["accuracy_delta"] == pytest.approx(-0.01)
    md = compare_markdown([base, stu])
    assert "| student | x86_64-int8 | 0.500 | 200.0x | 0.500 | 40.0x |" in md


def test_cli_bench_and_compare(student_bundle, tmp_path, capsys):
    data = tmp_path / "d.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(zip(TEXTS, LABELS))
    assert load_texts(data)[1] == LABELS
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    rc = main(["bench", str(student_bundle), "--precision", "int8", "--batches", "1,8", "--min-time", "0.02",
               "--data", str(data), "--json", str(js), "--markdown", str(md)])
    assert rc == 0
    r = json.loads(js.read_text())
    assert set(r["latency"]) == {"1", "8"} and "| batch | p50 ms |" in md.read_text()
    cj, cm = tmp_path / "c.json", tmp_path / "c.md"
    entry_fp32 = f"{student_bundle}@fp32"
    rc = main(["compare", entry_fp32, str(js), "--baseline", entry_fp32, "--min-time", "0.02",
               "--data", str(data), "--json", str(cj), "--markdown", str(cm)])
    assert rc == 0
    c = json.loads(cj.read_text())
    assert [x["variant"] for x in c["results"]] == ["x86_64-fp32", r["variant"]]
    assert "| student | x86_64-fp32 |" in cm.read_text() and "1.0x" in cm.read_text()
    capsys.readouterr()
    assert main(["compare", str(js), "--baseline", "nope"]) == 2
    assert "--baseline" in capsys.readouterr().err
    rc = main(["predict", str(student_bundle), "Oil prices slump", ""])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0 and lines[1]["empty"] is True and lines[0]["explanation"][0][0] == "Oil"
