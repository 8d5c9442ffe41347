"""The torch-free runtime: imports, variant selection, odd inputs, thread safety."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from factories import TEXTS
from edgekd.errors import EdgekdValueError
from edgekd.runtime import Bundle, select_variant
from edgekd.runtime.cpu import cpu_features, has_int8_dot_product, normalize_target

HEAVY = ("torch", "transformers", "edgekd.ops", "edgekd.students", "edgekd.compile", "onnx", "safetensors")


def test_runtime_and_bench_never_import_torch(student_bundle, tmp_path):
    """Load, predict, bench and the bench CLI module in a fresh interpreter: no torch, no transformers."""
    code = f"""
import sys, json
from edgekd.runtime import Bundle
from edgekd.runtime.bench import bench, bench_markdown
import edgekd.runtime.cli
b = Bundle.load({str(student_bundle)!r})
p = b.predict(["oil prices slump", ""])
r = bench({str(student_bundle)!r}, batches=[1], min_time=0.01, min_iters=2, warmup=1)
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ("torch", "transformers", "onnx", "safetensors")
                        or m.startswith(("edgekd.ops", "edgekd.students")))))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_cli_works_without_torch(student_bundle, rag_lm_bundle, tmp_path):
    """With torch and transformers made unimportable (as on a device with only edgekd[runtime]),
    ``edgekd predict``, ``edgekd bench`` and ``edgekd answer`` (a generative bundle's retrieval
    index + SGP) still work, and none of them imports torch."""
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ("torch", "transformers", "onnx", "safetensors"):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from edgekd.cli import main
assert main(["predict", {str(student_bundle)!r}, "oil prices slump"]) == 0
assert main(["bench", {str(student_bundle)!r}, "--batches", "1", "--min-time", "0.01",
             "--json", {str(tmp_path / "r.json")!r}]) == 0
assert main(["answer", {str(rag_lm_bundle.with_suffix(".zip"))!r}, "What fell?", "--json", "--max-new-tokens", "4"]) == 0
print(sorted(m for m in sys.modules if m.split('.')[0] in ("torch", "transformers", "onnx", "safetensors")))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["latency"]["1"]["p50_ms"] > 0
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "[]"
    answer = json.loads(lines[-2])
    assert answer["mode"] == "sgp" and answer["paragraph_id"] in [f"p{i}" for i in range(6)]
    assert len(answer["candidates"]) == 3


def test_predict_outputs(student_bundle):
    b = Bundle.load(student_bundle, precision="fp32")
    p = b.predict(TEXTS[:3])
    assert len(p) == 3 and p.probabilities.shape == (3, 3)
    np.testing.assert_allclose(p.probabilities.sum(1), 1.0, atol=1e-6)
    assert p.labels == [b.label_names[i] for i in p.label_ids]
    # word-level explanations: the original words (case kept), weights summing to 1
    words = [w for w, _ in p.explanations[0]]
    assert words == ["Stocks", "rally", "as", "$AAPL", "beats", "earnings", "estimates"]  # as written, whitespace-delimited
    assert abs(sum(w for _, w in p.explanations[0]) - 1.0) < 1e-5
    single = b.predict(TEXTS[0])
    np.testing.assert_allclose(single.logits[0], p.logits[0], atol=1e-5)


def test_odd_inputs(student_bundle):
    b = Bundle.load(student_bundle, precision="fp32")
    texts = ["", "   \n\t ", "\u200b\ufeff", "ünïcödé ÄÖÜ 株価 📉📉 \U0001F680", "zzzz qqqq unknownword",
             "oil " * 10_000, "Oil\x00prices\x07slump"]
    p = b.predict(texts)
    # zero-width characters are not whitespace for the tokenizer: one unknown word, not empty
    assert p.empty.tolist() == [True, True, False, False, False, False, False]
    assert np.isfinite(p.probabilities).all()
    # empty texts are the [UNK]-only input: identical predictions, no words to explain
    np.testing.assert_allclose(p.logits[0], p.logits[1], atol=1e-6)
    assert p.explanations[0] == []
    unk = b.predict(["zzzz"]).logits[0]  # an unknown word is fed as [UNK] too
    np.testing.assert_allclose(p.logits[0], unk, atol=1e-6)
    # long text: truncated to max_length tokens
    assert len(p.explanations[5]) == b.manifest["preprocessing"]["max_length"]
    np.testing.assert_allclose(p.logits[5], b.predict(["oil " * 16]).logits[0], atol=1e-5)
    for bad in ([], [1, 2], None, b"bytes", ["ok", None]):
        with pytest.raises(EdgekdValueError, match="texts"):
            b.predict(bad)


def test_threads_match_serial(student_bundle):
    b = Bundle.load(student_bundle, precision="int8", threads=1)
    rng = np.random.default_rng(0)
    batches = [[TEXTS[i] for i in rng.integers(0, len(TEXTS), size=int(rng.integers(1, 6)))] for _ in range(48)]
    serial = [b.predict(t).logits for t in batches]
    with ThreadPoolExecutor(max_workers=8) as ex:
        parallel = list(ex.map(lambda t: b.predict(t).logits, batches))
    for s, p in zip(serial, parallel):
        np.testing.assert_array_equal(s, p)


def test_variant_selection(student_bundle):
    m = json.loads((student_bundle / "manifest.json").read_text())
    assert select_variant(m, "x86_64", "auto", frozenset({"avx2"}))["id"] == "x86_64-int8"
    assert select_variant(m, "x86_64", "auto", frozenset({"avx2", "int8_dot"}))["id"] == "x86_64-int8-vnni"
    assert select_variant(m, "x86_64", "fp32", frozenset())["id"] == "x86_64-fp32"
    assert select_variant(m, "aarch64", "int8", frozenset())["id"] == "arm64-int8"
    with pytest.raises(EdgekdValueError, match="precision"):
        select_variant(m, "x86_64", "int4", frozenset())
    b = Bundle.load(student_bundle)  # auto on this machine
    feats = cpu_features()
    expect = "x86_64-int8-vnni" if has_int8_dot_product("x86_64", feats) else "x86_64-int8"
    assert b.variant["id"] == expect


def test_cpu_helpers(tmp_path):
    assert normalize_target("AMD64") == "x86_64" and normalize_target("aarch64") == "arm64"
    with pytest.raises(EdgekdValueError, match="unknown target"):
        normalize_target("sparc")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp\n")
    feats = cpu_features(info)
    assert "asimddp" in feats and has_int8_dot_product("arm64", feats)
    assert not has_int8_dot_product("x86_64", frozenset({"avx2"}))
    assert cpu_features(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("which", ["student_bundle", "teacher_bundle"])
def test_int8_labels_do_not_depend_on_the_batch(which, request):
    """Shipped int8 variants are static (calibrated QDQ): a text's label and probabilities are the
    same alone and inside a batch of 32 other texts (dynamic int8 took one activation scale per batch)."""
    path = request.getfixturevalue(which)
    texts = (TEXTS * 3)[:32]
    texts[5] = texts[5] + " " + " ".join(TEXTS)  # one long text changes the padding and the ranges
    for prec in ("int8",):
        b = Bundle.load(path, precision=prec)
        assert b.variant["quantization"]["batch_invariant"]
        batch = b.predict(texts, explain=False)
        for k, t in enumerate(texts):
            alone = b.predict(t, explain=False)
            assert alone.labels[0] == batch.labels[k]
            np.testing.assert_allclose(alone.probabilities[0], batch.probabilities[k], atol=1e-5)
