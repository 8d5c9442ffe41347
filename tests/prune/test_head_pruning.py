"""Attention-head pruning (edgekd.prune.heads) on tiny random BERT models."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from edgekd.errors import EdgekdValueError
from edgekd.prune import (
    head_importance,
    load_head_pruned_model,
    prune_heads,
    prune_least_important_heads,
    pruned_heads,
    remaining_heads,
)
from factories import make_batch, tiny_classifier

HEAD_DIM = 8  # hidden 32 / 4 heads


def _dev_batches(n=2, seed=0):
    out = []
    for i in range(n):
        b = make_batch(4, 12, lengths=[12, 9, 12, 5], seed=seed + i)
        b["labels"] = torch.tensor([0, 1, 2, 1])
        out.append(b)
    return out


def _scale_value_head(model, layer, head, factor):
    """Multiply head ``head``'s value rows: the head's context output scales by ``factor``."""
    v = model.bert.encoder.layer[layer].attention.self.value
    sl = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    with torch.no_grad():
        v.weight[sl] *= factor
        v.bias[sl] *= factor


def test_importance_equals_finite_difference_of_head_scale():
    model = tiny_classifier(0).double()
    batch = _dev_batches(1)[0]
    imp = head_importance(model, [batch], normalize_layers=False)
    assert [t.shape for t in imp] == [(4,)] * 4
    eps = 1e-5
    for layer, head in [(0, 1), (3, 2)]:
        plus, minus = copy.deepcopy(model), copy.deepcopy(model)
        _scale_value_head(plus, layer, head, 1 + eps)
        _scale_value_head(minus, layer, head, 1 - eps)
        with torch.no_grad():
            fd = (plus(**batch).loss - minus(**batch).loss) / (2 * eps)
        assert imp[layer][head].item() == pytest.approx(abs(fd.item()), rel=1e-4, abs=1e-9)
    # the model is left as it was: no hooks, parameters still trainable, mode restored
    assert all(p.requires_grad for p in model.parameters())
    assert not model.bert.encoder.layer[0].attention.self._forward_hooks


def test_importance_normalised_per_layer():
    model = tiny_classifier(1)
    imp = head_importance(model, _dev_batches(2))
    for t in imp:
        assert (t >= 0).all()
        assert t.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_pruned_heads_equal_zeroed_heads_and_model_is_smaller():
    model = tiny_classifier(2)
    ref = copy.deepcopy(model)
    heads = {0: [1, 3], 2: [0]}
    for layer, hs in heads.items():
        for h in hs:
            _scale_value_head(ref, layer, h, 0.0)  # a zero context = a removed head
    n_before = sum(p.numel() for p in model.parameters())
    prune_heads(model, heads)
    n_after = sum(p.numel() for p in model.parameters())
    assert n_before - n_after == 3 * (3 * (32 * HEAD_DIM + HEAD_DIM) + 32 * HEAD_DIM)
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 16
    assert model.bert.encoder.layer[0].attention.output.dense.in_features == 16
    batch = make_batch(3, 11, lengths=[11, 7, 2], seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ref(**batch).logits, atol=1e-5, rtol=1e-5)
    assert pruned_heads(model) == {0: [1, 3], 2: [0]}
    assert remaining_heads(model)[0] == [0, 2]


def test_saved_head_pruned_model_reloads_smaller_with_identical_outputs(tmp_path):
    model = tiny_classifier(3, attn="sdpa")
    prune_heads(model, {1: [2]})
    prune_heads(model, {1: [0], 3: [1, 2, 3]})  # a second round: original head numbers
    assert pruned_heads(model) == {1: [0, 2], 3: [1, 2, 3]}
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["edgekd_pruned_heads"] == {"1": [0, 2], "3": [1, 2, 3]}
    again = load_head_pruned_model(tmp_path)
    assert again.bert.encoder.layer[1].attention.self.key.out_features == 16
    assert again.bert.encoder.layer[3].attention.self.value.out_features == 8
    assert again.bert.encoder.layer[0].attention.self.value.out_features == 32
    batch = make_batch(2, 9, lengths=[9, 4], seed=5)
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, model.eval()(**batch).logits)
    assert pruned_heads(again) == pruned_heads(model)


def test_prune_least_important_heads():
    model = tiny_classifier(4)
    imp = [torch.tensor([0.1, 0.9, 0.8, 0.7]), torch.tensor([0.01, 0.02, 0.03, 0.04]),
           torch.tensor([0.5, 0.6, 0.2, 0.9]), torch.tensor([0.3, 0.3, 0.3, 0.3])]
    removed = prune_least_important_heads(model, 5, imp)
    # layer 1 holds the four lowest but keeps one head; next lowest: 0.1 (L0 H0), 0.2 (L2 H2)
    assert removed == {0: [0], 1: [0, 1, 2], 2: [2]}
    assert remaining_heads(model)[1] == [3]
    imp2 = head_importance(model, _dev_batches(1))
    assert [t.numel() for t in imp2] == [3, 1, 3, 4]
    with pytest.raises(EdgekdValueError, match="exceeds"):
        prune_least_important_heads(model, 8, imp2)
    assert prune_least_important_heads(model, 0, imp2) == {}


def test_head_pruning_errors():
    model = tiny_classifier(5)
    with pytest.raises(EdgekdValueError, match="every remaining head"):
        prune_heads(model, {0: [0, 1, 2, 3]})
    with pytest.raises(EdgekdValueError, match="out of range"):
        prune_heads(model, {9: [0]})
    with pytest.raises(EdgekdValueError, match="not an int"):
        prune_heads(model, {0: [4]})
    prune_heads(model, {0: [1]})
    with pytest.raises(EdgekdValueError, match="already pruned"):
        prune_heads(model, {0: [1]})
    with pytest.raises(EdgekdValueError, match="BertModel"):
        prune_heads(torch.nn.Linear(2, 2), {0: [1]})
    with pytest.raises(EdgekdValueError, match="empty"):
        head_importance(model, [])
    with pytest.raises(EdgekdValueError, match="loss"):
        head_importance(model, [make_batch(2, 5)])
    with pytest.raises(EdgekdValueError, match="shape"):
        prune_least_important_heads(model, 1, [torch.ones(4)] * 4)
