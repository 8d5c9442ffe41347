import pytest
import torch
from transformers import AutoModelForCausalLM

from edgekd.errors import EdgekdValueError
from edgekd.llm.models import count_parameters, save_causal_lm
from edgekd.llm.prune import (block_influence, calibration_batches, evenly_spaced_layers, layer_drop_importance,
                              prune_depth, prune_width, select_layers, width_importance)


def _calib(n=6, t=10, pad_last=3):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 48, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, t - pad_last:] = 0  # a right-padded row: its padding must not count
    return ids, mask


@torch.no_grad()
def _nll(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()
    m = mask[:, 1:].bool() & mask[:, :-1].bool()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return float(nll[m].mean())


def test_block_influence_against_hidden_states(model):
    ids, mask = _calib()
    bi = block_influence(model, calibration_batches(ids, mask, batch_size=4))
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    L = model.config.num_hidden_layers
    assert bi.shape == (L,)
    # hidden_states[i] is block i's input; the last entry has the final norm applied, so check blocks 0..L-2
    for i in range(L - 1):
        cos = torch.nn.functional.cosine_similarity(hs[i].double(), hs[i + 1].double(), dim=-1)
        want = 1 - float(cos[mask.bool()].mean())
        assert abs(float(bi[i]) - want) < 1e-5 * max(1.0, abs(want))


def test_layer_drop_importance_is_the_loss_increase_without_the_block(model):
    ids, mask = _calib()
    imp = layer_drop_importance(model, calibration_batches(ids, mask, batch_size=4))
    base = _nll(model, ids, mask)
    L = model.config.num_hidden_layers
    for i in range(L):
        without = prune_depth(model, [j for j in range(L) if j != i])
        want = _nll(without, ids, mask) - base
        assert abs(float(imp[i]) - want) < 1e-5 * max(1.0, abs(want)) + 1e-6


def test_evenly_spaced_and_select():
    assert evenly_spaced_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert evenly_spaced_layers(30, 30) == list(range(30))
    assert evenly_spaced_layers(5, 1) == [4]
    assert select_layers([0.1, 0.5, 0.3, 0.5, 0.0], 3) == [1, 2, 3]
    with pytest.raises(EdgekdValueError, match="keep"):
        evenly_spaced_layers(4, 5)
    with pytest.raises(EdgekdValueError, match="keep"):
        select_layers([0.1, 0.2], 0)
    with pytest.raises(EdgekdValueError, match="NaN"):
        select_layers([0.1, float("nan")], 1)


def test_depth_pruned_model_reloads_as_smaller_architecture(tmp_path, model):
    ids, mask = _calib()
    keep = select_layers(block_influence(model, calibration_batches(ids, mask)), 2)
    small = prune_depth(model, keep)
    assert small.config.num_hidden_layers == 2 and len(small.model.layers) == 2
    assert model.config.num_hidden_layers == 4  # the teacher is untouched
    assert count_parameters(small) < count_parameters(model)
    for new, old in enumerate(keep):
        torch.testing.assert_close(small.model.layers[new].mlp.up_proj.weight, model.model.layers[old].mlp.up_proj.weight)
    save_causal_lm(small, tmp_path / "s")
    r = AutoModelForCausalLM.from_pretrained(str(tmp_path / "s")).eval()
    assert r.config.num_hidden_layers == 2
    torch.testing.assert_close(r(ids, attention_mask=mask).logits, small(ids, attention_mask=mask).logits, rtol=0, atol=0)


def test_width_pruning_removes_dead_channels_and_groups_exactly(tmp_path, model):
    # zero the down_proj columns of 10 MLP channels and the o_proj columns of one KV group's query
    # heads in every layer: pruning exactly those (they have zero activation importance) keeps the logits
    cfg = model.config
    hd, group = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    dead = torch.arange(5, 15)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, dead] = 0
            layer.mlp.up_proj.weight[dead] = 0
            layer.self_attn.o_proj.weight[:, group * hd:2 * group * hd] = 0  # group 1 = query heads 2, 3
            layer.self_attn.v_proj.weight[hd:2 * hd] = 0
    ids, mask = _calib()
    imp = width_importance(model, calibration_batches(ids, mask))
    assert imp["mlp"].shape == (4, 40) and imp["heads"].shape == (4, 4)
    assert float(imp["mlp"][:, dead].abs().max()) == 0 and float(imp["heads"][:, 2:].abs().max()) == 0
    small = prune_width(model, imp, intermediate_size=30, num_key_value_heads=1)
    c = small.config
    assert (c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (30, 2, 1, 8)
    assert small.model.layers[0].self_attn.q_proj.weight.shape == (16, 32)
    assert small.model.layers[0].self_attn.k_proj.weight.shape == (8, 32)
    torch.testing.assert_close(small.model.layers[0].self_attn.k_proj.weight, model.model.layers[0].self_attn.k_proj.weight[:hd])
    torch.testing.assert_close(small(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits,
                               rtol=1e-5, atol=1e-5)
    save_causal_lm(small, tmp_path / "w")
    r = AutoModelForCausalLM.from_pretrained(str(tmp_path / "w")).eval()
    torch.testing.assert_close(r(ids, attention_mask=mask).logits, small(ids, attention_mask=mask).logits, rtol=0, atol=0)


def test_width_then_depth_and_mha(make_llama):
    m = make_llama(heads=4, kv_heads=4, seed=2)  # plain multi-head attention: groups of one head
    ids, mask = _calib()
    b = calibration_batches(ids, mask)
    w = prune_width(m, width_importance(m, b), num_key_value_heads=3)
    assert (w.config.num_attention_heads, w.config.num_key_value_heads, w.config.intermediate_size) == (3, 3, 40)
    d = prune_depth(w, evenly_spaced_layers(4, 2))
    assert d.config.num_hidden_layers == 2
    assert torch.isfinite(d(ids, attention_mask=mask).logits).all()


def test_bad_inputs(model):
    ids, mask = _calib()
    b = calibration_batches(ids, mask)
    imp = width_importance(model, b)
    with pytest.raises(EdgekdValueError, match="distinct indices"):
        prune_depth(model, [0, 7])
    with pytest.raises(EdgekdValueError, match="distinct indices"):
        prune_depth(model, [1, 1])
    with pytest.raises(EdgekdValueError, match="non-empty"):
        prune_depth(model, [])
    with pytest.raises(EdgekdValueError, match="num_key_value_heads"):
        prune_width(model, imp, num_key_value_heads=0)
    with pytest.raises(EdgekdValueError, match="intermediate_size"):
        prune_width(model, imp, intermediate_size=41)
    with pytest.raises(EdgekdValueError, match="shape"):
        prune_width(model, {"mlp": imp["mlp"][:2], "heads": imp["heads"]}, intermediate_size=8)
    with pytest.raises(EdgekdValueError, match="input_ids"):
        calibration_batches(torch.zeros(0, 5, dtype=torch.long))
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(EdgekdValueError, match="model_type"):
        block_influence(gpt2, b)
    with pytest.raises(EdgekdValueError, match="model_type"):
        prune_depth(gpt2, [0])
