import pytest
import torch
from transformers import AutoModelForCausalLM

from edgekd.errors import EdgekdValueError
from edgekd.llm.models import count_parameters, is_gguf_model, load_causal_lm, plain_copy, save_causal_lm


def _ids():
    return torch.randint(4, 48, (3, 11), generator=torch.Generator().manual_seed(1))


def test_save_reload_identical_outputs(tmp_path, model, tokenizer):
    out = save_causal_lm(model, tmp_path / "m", tokenizer)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    ids = _ids()
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    m2, tok2 = load_causal_lm(out)
    torch.testing.assert_close(m2(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert not m2.training
    assert tok2("w1 w2 w3")["input_ids"] == tokenizer("w1 w2 w3")["input_ids"]


def test_untied_head_reloads(tmp_path, make_llama):
    m = make_llama(tie=False, seed=3)
    save_causal_lm(m, tmp_path / "m")
    r, tok = load_causal_lm(tmp_path / "m", tokenizer=False)
    assert tok is None
    ids = _ids()
    torch.testing.assert_close(r(ids).logits, m(ids).logits, rtol=0, atol=0)


def test_gguf_loaded_model_is_saved_plain(tmp_path, model):
    # a GGUF-loaded model carries quantization_config (quant_method gguf) and transformers refuses to
    # save it; save_causal_lm builds a plain copy from the config without it
    model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    assert is_gguf_model(model)
    plain = plain_copy(model)
    assert not is_gguf_model(plain) and not hasattr(plain.config, "quantization_config")
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()  # still tied
    save_causal_lm(model, tmp_path / "m")
    assert "quantization_config" not in (tmp_path / "m" / "config.json").read_text()
    ids = _ids()
    r = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    torch.testing.assert_close(r(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_count_parameters_counts_tied_once(model, make_llama):
    c = model.config
    emb = c.vocab_size * c.hidden_size
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(make_llama(tie=False)) == count_parameters(model) + emb


def test_bad_sources(tmp_path):
    with pytest.raises(EdgekdValueError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(EdgekdValueError, match="not a .gguf file"):
        load_causal_lm(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgekdValueError, match="no config.json"):
        load_causal_lm(tmp_path / "empty")
    with pytest.raises(EdgekdValueError, match="dtype"):
        load_causal_lm(tmp_path / "empty", dtype="int3")


def test_hub_id_goes_to_the_hub_loader(monkeypatch):
    # a hub id is handed to transformers (here offline and not cached: a clear error, no download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EdgekdValueError, match="cannot load a causal LM from edgekd-test/not-a-model"):
        load_causal_lm("edgekd-test/not-a-model", local_files_only=True)
