"""The real SmolLM2-135M-Instruct GGUF teacher (98 MB, minutes on a shared CPU): marked slow and run
only with EDGEKD_LLM_SLOW=1, so neither ``make test`` nor CI loads it."""
import os

import pytest
import torch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("EDGEKD_LLM_SLOW") != "1", reason="set EDGEKD_LLM_SLOW=1")]


def _gguf():
    from edgekd.assets import asset_path

    return asset_path("smollm2")  # AssetNotInstalledError names the pip line when missing


def test_smollm2_gguf_loads_saves_and_prunes(tmp_path):
    from transformers import AutoModelForCausalLM

    from edgekd.llm import count_parameters, evenly_spaced_layers, load_causal_lm, prune_depth, save_causal_lm

    teacher, tok = load_causal_lm(_gguf())
    assert teacher.config.num_hidden_layers == 30 and teacher.config.vocab_size == 49152
    assert count_parameters(teacher) == 134_515_008
    ids = tok("Our privacy policy explains how we use cookies.", return_tensors="pt")["input_ids"]
    save_causal_lm(teacher, tmp_path / "t", tok)
    r = AutoModelForCausalLM.from_pretrained(str(tmp_path / "t")).eval()
    with torch.no_grad():
        torch.testing.assert_close(r(ids).logits, teacher(ids).logits, rtol=0, atol=0)
    student = prune_depth(teacher, evenly_spaced_layers(30, 8))
    assert round(count_parameters(student) / 1e6, 1) == 56.6
