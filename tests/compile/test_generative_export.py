"""compile_causal_lm: onnxruntime-genai builder export -> generative bundle; parity with PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from factories import LM_CORPUS
from numerics import assert_close_f64
from edgekd.compile.generative import compile_causal_lm
from edgekd.errors import EdgekdValueError
from edgekd.runtime.generative import GenerativeBundle

PROMPTS = ["The quick brown fox", "Stocks rose on", "def add(a, b):"]


@pytest.fixture(scope="module")
def torch_lm(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float64).eval()


def test_manifest_records_quality_and_parity(lm_bundle):
    m = json.loads((lm_bundle / "manifest.json").read_text())
    assert m["task"] == "text-generation" and "label_names" not in m
    assert [v["precision"] for v in m["variants"]] == ["fp32", "int4"]
    fp32, int4 = m["variants"]
    assert fp32["parity"]["greedy_identical"] is True
    assert int4["weights"]["bits"] == 4 and int4["weights"]["block_size"] == 32
    for v in (fp32, int4):
        q = v["quality"]
        assert q["eval_texts"] == 3 and q["eval_tokens"] > 10
        assert np.isfinite(q["perplexity"]) and q["perplexity"] > 1
        assert q["perplexity_delta_vs_fp32"] == pytest.approx(q["perplexity"] - fp32["quality"]["perplexity"])
    assert abs(fp32["quality"]["perplexity_delta_vs_pytorch"]) < 1e-3 * fp32["quality"]["perplexity"]
    # int4 is much smaller than fp32 (only the tokenizer-sized embedding table keeps it above 1/8)
    files = m["files"]
    size = lambda p: sum(e["size"] for r, e in files.items() if r.startswith(f"variants/{p}/"))  # noqa: E731
    assert size("int4") < size("fp32") / 3
    assert (lm_bundle.with_suffix(".zip")).is_file()


def test_fp32_logits_match_float64_pytorch(lm_bundle, torch_lm):
    lm = GenerativeBundle.load(lm_bundle, precision="fp32")
    cfg = torch_lm.config
    for text in LM_CORPUS[:4]:
        ids = lm.encode(text)
        got = torch.from_numpy(lm.logits(ids))
        with torch.no_grad():
            ref = torch_lm(torch.tensor([ids])).logits[0]
        assert_close_f64(got, ref, n=cfg.hidden_size * cfg.num_hidden_layers * 4, name=f"logits {text[:12]!r}")


def test_fp32_greedy_token_identical_to_pytorch(lm_bundle, torch_lm):
    lm = GenerativeBundle.load(lm_bundle, precision="fp32")
    for p in PROMPTS:
        ids = lm.encode(p)
        with torch.no_grad():
            out = torch_lm.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=20, do_sample=False, pad_token_id=0)
        want = out[0, len(ids):].tolist()
        got = lm.generate(p, max_new_tokens=20)
        n = len(got.token_ids)
        assert got.token_ids == want[:n]
        assert n == 20 or want[n] in lm.eos_ids  # stopped early only on EOS


def test_bad_arguments_are_refused(tiny_lm_dir, tmp_path):
    with pytest.raises(EdgekdValueError, match="precisions"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=LM_CORPUS, precisions=("int3",))
    with pytest.raises(EdgekdValueError, match="block_size"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=LM_CORPUS, block_size=48)
    with pytest.raises(EdgekdValueError, match="eval_texts"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=[])
    with pytest.raises(EdgekdValueError, match="context_length"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "b", eval_texts=LM_CORPUS, context_length=10_000)
    with pytest.raises(EdgekdValueError, match="neither"):
        compile_causal_lm(tmp_path / "nothing", tmp_path / "b", eval_texts=LM_CORPUS)
    (tmp_path / "exists").mkdir()
    with pytest.raises(EdgekdValueError, match="exists"):
        compile_causal_lm(tiny_lm_dir, tmp_path / "exists", eval_texts=LM_CORPUS)
