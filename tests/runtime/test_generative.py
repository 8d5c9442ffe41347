"""The torch-free generative runtime: KV loop, streaming, stop strings, batches, context cap, integrity."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgekd.errors import BundleError, EdgekdValueError
from edgekd.runtime import Bundle
from edgekd.runtime.bundle import write_manifest
from edgekd.runtime.generative import GenerativeBundle, SamplingConfig, sample_next

PROMPTS = ["The quick brown fox", "Stocks rose on Monday after the central", "Café"]


@pytest.fixture(scope="module")
def lm(lm_bundle):
    return GenerativeBundle.load(lm_bundle, precision="fp32", threads=1)


def test_kv_cache_decoding_matches_full_forward(lm):
    """Each greedy token is the argmax of a full (no-cache) forward pass over prompt + tokens so far."""
    ids = lm.encode(PROMPTS[0])
    g = lm.generate(PROMPTS[0], max_new_tokens=10)
    seq = list(ids)
    for tok in g.token_ids:
        assert int(lm.logits(seq)[-1].argmax()) == tok
        seq.append(tok)


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.8, top_k=20, top_p=0.9, seed=3)])
def test_streaming_equals_non_streaming(lm, kw):
    for p in PROMPTS:
        g = lm.generate(p, max_new_tokens=24, **kw)
        pieces = list(lm.stream(p, max_new_tokens=24, **kw))
        assert "".join(pieces) == g.text
        assert len(pieces) > 1


def test_sampling_is_seeded_and_respects_top_k():
    logits = np.random.default_rng(0).normal(size=(3, 50))
    cfg = SamplingConfig(temperature=1.0, top_k=3, seed=7)
    a = [sample_next(logits, cfg, np.random.default_rng(7)) for _ in range(20)]
    b = [sample_next(logits, cfg, np.random.default_rng(7)) for _ in range(20)]
    assert all((x == y).all() for x, y in zip(a, b))
    top3 = np.argsort(-logits, axis=1)[:, :3]
    rng = np.random.default_rng(1)
    for _ in range(50):
        s = sample_next(logits, cfg, rng)
        assert all(s[r] in top3[r] for r in range(3))
    nucleus = SamplingConfig(temperature=1.0, top_p=1e-9)  # the smallest set reaching p: the argmax alone
    assert (sample_next(logits, nucleus, rng) == logits.argmax(1)).all()


def test_stop_strings_end_the_text_before_the_stop(lm):
    full = lm.generate(PROMPTS[1], max_new_tokens=24)
    assert len(full.text) > 6
    stop = full.text[3:6]
    first = full.text.find(stop)
    g = lm.generate(PROMPTS[1], max_new_tokens=24, stop=[stop, "\x00never"])
    assert g.finish_reason == "stop" and g.text == full.text[:first]
    assert "".join(lm.stream(PROMPTS[1], max_new_tokens=24, stop=stop)) == full.text[:first]


def test_batch_rows_finish_at_their_own_step(lm):
    singles = [lm.generate(p, max_new_tokens=16) for p in PROMPTS]
    stop = singles[0].text[4:7]
    assert all(stop not in s.text for s in singles[1:])
    batch = lm.generate(PROMPTS, max_new_tokens=16, stop=stop)
    assert batch[0].finish_reason == "stop" and batch[0].text == singles[0].text[:singles[0].text.find(stop)]
    for s, b in zip(singles[1:], batch[1:]):  # right-padded rows of other lengths decode as when alone
        assert b.token_ids == s.token_ids and b.text == s.text and b.finish_reason == s.finish_reason


def test_eos_ends_one_row_of_a_batch(lm_bundle, tmp_path):
    """A bundle whose EOS is the token row 0 emits third: row 0 ends there, row 1 goes on."""
    lm = GenerativeBundle.load(lm_bundle, precision="fp32")
    singles = [lm.generate(p, max_new_tokens=12) for p in PROMPTS[:2]]
    eos = singles[0].token_ids[2]
    assert eos not in singles[0].token_ids[:2] and eos not in singles[1].token_ids
    copy = tmp_path / "b"
    shutil.copytree(lm_bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["generation"]["eos_token_ids"] = [eos]
    write_manifest(copy, m)
    out = GenerativeBundle.load(copy, precision="fp32").generate(PROMPTS[:2], max_new_tokens=12)
    assert out[0].finish_reason == "eos" and out[0].token_ids == singles[0].token_ids[:2]
    assert out[1].finish_reason == "length" and out[1].token_ids == singles[1].token_ids


def test_chat_messages_use_the_bundle_template(lm):
    msgs = [{"role": "user", "content": "Hello"}]
    ids = lm.encode(msgs)
    assert lm.tokenizer.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert lm.generate(msgs, max_new_tokens=4).prompt_tokens == len(ids)
    with pytest.raises(EdgekdValueError, match="messages"):
        lm.encode([{"role": "user"}])


def test_too_long_prompt_refused_or_truncated(lm):
    ctx = lm.context_length
    long = " ".join(["fox"] * (ctx + 10))
    with pytest.raises(EdgekdValueError, match="context of"):
        lm.generate(long, max_new_tokens=8)
    g = lm.generate(long, max_new_tokens=8, truncate=True)
    assert g.truncated_prompt and g.prompt_tokens == ctx - 8 and len(g.token_ids) <= 8
    with pytest.raises(EdgekdValueError, match="max_new_tokens"):
        lm.generate("fox", max_new_tokens=ctx)


@pytest.mark.parametrize("kw,match", [(dict(max_new_tokens=0), "max_new_tokens"), (dict(temperature=-1), "temperature"),
                                      (dict(temperature=float("nan")), "temperature"), (dict(top_p=0), "top_p"),
                                      (dict(top_k=-2), "top_k"), (dict(seed=-1), "seed"), (dict(stop=[""]), "stop")])
def test_bad_generation_arguments(lm, kw, match):
    with pytest.raises(EdgekdValueError, match=match):
        lm.generate("fox", **kw)


def test_bad_prompts(lm):
    for bad in ("", []):
        with pytest.raises(EdgekdValueError, match="prompt"):
            lm.generate(bad)


def test_zip_and_int4_load(lm_bundle):
    z = GenerativeBundle.load(lm_bundle.with_suffix(".zip"))
    assert z.variant["precision"] == "int4"  # auto prefers int4
    g = z.generate(PROMPTS[0], max_new_tokens=6)
    assert g.prompt_tokens > 0 and 0 < len(g.token_ids) <= 6
    assert z.generate([{"role": "user", "content": "Hi"}], max_new_tokens=3).prompt_tokens > 3  # template extracted
    assert z.size_bytes < GenerativeBundle.load(lm_bundle, precision="fp32").size_bytes


def test_corrupt_or_edited_bundle_refused(lm_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(lm_bundle, bad)
    data = bad / "variants" / "fp32" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="checksum mismatch"):
        GenerativeBundle.load(bad, precision="fp32")
    edited = tmp_path / "edited"
    shutil.copytree(lm_bundle, edited)
    m = json.loads((edited / "manifest.json").read_text())
    m["generation"]["eos_token_ids"] = []  # schema-valid, but not what was signed off
    (edited / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="changed after"):
        GenerativeBundle.load(edited)
    m["generation"]["io"] = "unknown"
    with pytest.raises(BundleError, match="generation.io"):
        write_manifest(edited, m)


def test_classifier_and_generative_loaders_refuse_each_other(lm_bundle, student_bundle):
    with pytest.raises(BundleError, match="generative"):
        Bundle.load(lm_bundle)
    with pytest.raises(BundleError, match="not a generative bundle"):
        GenerativeBundle.load(student_bundle)


def test_retrieval_folder_hook_is_verified(lm_bundle, tmp_path):
    b = tmp_path / "rb"
    shutil.copytree(lm_bundle, b)
    (b / "retrieval").mkdir()
    (b / "retrieval" / "index.json").write_text('{"docs": []}')
    m = json.loads((b / "manifest.json").read_text())
    m["retrieval"] = {"dir": "retrieval"}
    write_manifest(b, m)
    lm = GenerativeBundle.load(b, precision="int4")
    assert lm.retrieval_dir == b / "retrieval"
    (b / "retrieval" / "index.json").write_text('{"docs": [1]}')
    with pytest.raises(BundleError, match="retrieval/index.json"):
        GenerativeBundle.load(b, precision="int4")
    m["retrieval"] = {"dir": "../x"}
    with pytest.raises(BundleError, match="escapes"):
        write_manifest(b, m)


def test_runtime_never_imports_torch(lm_bundle):
    code = f"""
import sys, json
from edgekd.runtime.generative import GenerativeBundle
import edgekd.runtime.cli
lm = GenerativeBundle.load({str(lm_bundle)!r})
g = lm.generate("The quick", max_new_tokens=4)
list(lm.stream([{{"role": "user", "content": "hi"}}], max_new_tokens=3))
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ("torch", "transformers", "onnx", "onnxruntime_genai"))))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_genai_engine_greedy_matches_ort_engine(lm_bundle):
    a = GenerativeBundle.load(lm_bundle, precision="fp32", engine="genai")
    b = GenerativeBundle.load(lm_bundle, precision="fp32")
    for p in PROMPTS[:2]:
        assert a.generate(p, max_new_tokens=12).token_ids == b.generate(p, max_new_tokens=12).token_ids
    assert "".join(a.stream(PROMPTS[0], max_new_tokens=12)) == a.generate(PROMPTS[0], max_new_tokens=12).text
