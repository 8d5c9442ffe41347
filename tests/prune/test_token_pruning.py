"""Token pruning (edgekd.prune.tokens) on tiny random BERT models."""
from __future__ import annotations

import json
import math

import pytest
import torch

from edgekd.errors import EdgekdValueError
from factories import make_batch, tiny_classifier, tiny_encoder

from edgekd.prune import (
    TokenPrunedModel,
    TokenPruningConfig,
    apply_token_pruning,
    load_pruned_model,
)


def _reference_row(pruned: TokenPrunedModel, ids: torch.Tensor, k_total: int):
    """One unpadded row, by hand: layers 0..L-1, score, rank in Python, gather, layers L.. (no mask)."""
    bert = pruned.bert
    L = pruned.pruning_config.layer
    with torch.no_grad():
        h = bert.embeddings(input_ids=ids[None])
        for layer in bert.encoder.layer[:L]:
            h = layer(h, None)
        s = pruned.scorer(h)[0].tolist()
        n = ids.numel()
        k = min(k_total, n)
        if pruned.pruning_config.keep_cls:
            rest = sorted(range(1, n), key=lambda i: -s[i])[: k - 1]
            sel = [0] + sorted(rest)
        else:
            sel = sorted(sorted(range(n), key=lambda i: -s[i])[:k])
        h = h[:, sel]
        for layer in bert.encoder.layer[L:]:
            h = layer(h, None)
        pooled = bert.pooler(h)
        logits = pruned.model.classifier(pooled) if hasattr(pruned.model, "classifier") else None
    return (None if logits is None else logits[0]), h[0], sel


def _check_against_reference(pruned, batch, k_total):
    with torch.no_grad():
        out = pruned(**batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    for b, n in enumerate(lengths):
        ref_logits, ref_h, sel = _reference_row(pruned, batch["input_ids"][b, :n], k_total)
        m = len(sel)
        if ref_logits is not None:
            torch.testing.assert_close(out.logits[b], ref_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.last_hidden_state[b, :m], ref_h, atol=1e-5, rtol=1e-5)
        assert out.kept_positions[b, :m].tolist() == sel
        assert out.kept_mask[b].tolist() == [1] * m + [0] * (out.kept_mask.shape[1] - m)


@pytest.mark.parametrize("layer,keep_ratio", [(0, 0.25), (1, 0.5), (2, 0.5), (3, 0.75)])
def test_eval_equals_hand_gathered_reference(layer, keep_ratio):
    pruned = apply_token_pruning(tiny_classifier(), TokenPruningConfig(layer=layer, keep_ratio=keep_ratio)).eval()
    batch = make_batch(3, 20, seed=layer)
    k_total = math.ceil(keep_ratio * 20)
    with torch.no_grad():
        out = pruned(**batch)
    assert out.last_hidden_state.shape == (3, k_total, 32)  # later layers really run on k tokens
    _check_against_reference(pruned, batch, k_total)


def test_padding_and_k_larger_than_valid_tokens():
    # N = 24, keep 0.5 -> k = 12; rows with 24, 16, 7 and 2 valid tokens
    pruned = apply_token_pruning(tiny_classifier(1), TokenPruningConfig(layer=1, keep_ratio=0.5)).eval()
    batch = make_batch(4, 24, lengths=[24, 16, 7, 2], seed=3)
    with torch.no_grad():
        out = pruned(**batch)
    assert out.kept_mask.sum(1).tolist() == [12, 12, 7, 2]  # k clipped to each row's valid count
    _check_against_reference(pruned, batch, 12)
    # padding is never kept while valid tokens remain
    for b, n in enumerate([24, 16, 7, 2]):
        valid_slots = out.kept_mask[b].bool()
        assert (out.kept_positions[b][valid_slots] < n).all()


def test_fixed_k_and_k_larger_than_sequence():
    model = tiny_classifier(2)
    batch = make_batch(2, 10, lengths=[10, 6], seed=4)
    pruned = apply_token_pruning(model, TokenPruningConfig(layer=2, k=4)).eval()
    _check_against_reference(pruned, batch, 4)
    big = apply_token_pruning(model, TokenPruningConfig(layer=2, k=1000)).eval()
    with torch.no_grad():
        ref = model(**batch).logits
        out = big(**batch)
    assert out.last_hidden_state.shape[1] == 10
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_all_tokens_equals_unpruned_model(attn):
    model = tiny_classifier(3, attn=attn)
    batch = make_batch(3, 17, lengths=[17, 9, 3], seed=5)
    with torch.no_grad():
        ref = model(**batch).logits
        for cfg in (TokenPruningConfig(layer=1, keep_ratio=1.0), TokenPruningConfig(layer=3, k=17)):
            out = apply_token_pruning(model, cfg).eval()(**batch)
            torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)


def test_encoder_without_classifier_and_keep_cls_false():
    enc = tiny_encoder(4)
    pruned = apply_token_pruning(enc, TokenPruningConfig(layer=1, keep_ratio=0.5, keep_cls=False, scorer="mlp")).eval()
    batch = make_batch(2, 12, seed=6)
    with torch.no_grad():
        out = pruned(**batch)
    assert out.logits is None and out.pooler_output.shape == (2, 32)
    _check_against_reference(pruned, batch, 6)
    with torch.no_grad():
        full = apply_token_pruning(enc, TokenPruningConfig(layer=1, keep_ratio=1.0)).eval()(**batch)
        ref = enc(**batch)
    torch.testing.assert_close(full.last_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_only_cls_kept():
    pruned = apply_token_pruning(tiny_classifier(), TokenPruningConfig(layer=1, k=1)).eval()
    batch = make_batch(2, 8, seed=7)
    with torch.no_grad():
        out = pruned(**batch)
    assert out.last_hidden_state.shape == (2, 1, 32)
    assert out.kept_positions.tolist() == [[0], [0]]
    _check_against_reference(pruned, batch, 1)


@pytest.mark.parametrize("estimator", ["exact", "diagonal"])
def test_training_gradients_reach_scorer(estimator):
    model = tiny_classifier(5)
    cfg = TokenPruningConfig(layer=2, keep_ratio=0.5, num_samples=16, sigma=0.5, estimator=estimator)
    pruned = apply_token_pruning(model, cfg).train()
    pruned.generator = torch.Generator().manual_seed(0)
    batch = make_batch(4, 16, lengths=[16, 12, 5, 16], seed=8)
    labels = torch.tensor([0, 1, 2, 1])
    out = pruned(**batch, labels=labels)
    assert out.kept_positions is None and out.last_hidden_state.shape == (4, 8, 32)
    assert out.kept_mask.sum(1).tolist() == [8, 8, 5, 8]
    out.loss.backward()
    for p in pruned.scorer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # the layers before and after the pruning point are trained too
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert model.bert.encoder.layer[3].output.dense.weight.grad.abs().sum() > 0


def test_sigma_schedule_and_hard_path_at_the_end():
    cfg = TokenPruningConfig(layer=1, keep_ratio=0.5, sigma=0.2, num_samples=8)
    assert cfg.sigma_at(0.0) == pytest.approx(0.2)
    assert cfg.sigma_at(0.5) == pytest.approx(0.1)
    assert cfg.sigma_at(1.0) == 0.0
    assert TokenPruningConfig(layer=1, k=3, sigma_schedule="constant").sigma_at(1.0) == pytest.approx(0.2)
    pruned = apply_token_pruning(tiny_classifier(), cfg).train()
    pruned.set_progress(1.0)  # sigma 0: hard top-k, dropout still active, no gradient to the scorer
    out = pruned(**make_batch(2, 10, seed=9), labels=torch.tensor([0, 2]))
    out.loss.backward()
    assert out.kept_positions is not None
    assert all(p.grad is None for p in pruned.scorer.parameters())
    with pytest.raises(EdgekdValueError, match="progress"):
        pruned.set_progress(1.5)


def test_training_step_is_deterministic_with_generator_and_changes_scorer():
    def run():
        pruned = apply_token_pruning(tiny_classifier(6), TokenPruningConfig(layer=1, keep_ratio=0.5, num_samples=8))
        pruned.train()
        pruned.generator = torch.Generator().manual_seed(1)
        torch.manual_seed(0)  # dropout
        opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
        before = pruned.scorer.net[0].weight.detach().clone()
        loss = pruned(**make_batch(4, 12, seed=10), labels=torch.tensor([0, 1, 2, 0])).loss
        loss.backward()
        opt.step()
        return before, pruned.scorer.net[0].weight.detach().clone(), loss.detach()

    b1, a1, l1 = run()
    b2, a2, l2 = run()
    assert torch.equal(a1, a2) and torch.equal(l1, l2)
    assert not torch.equal(b1, a1)


def test_save_and_reload_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    pruned = apply_token_pruning(
        tiny_classifier(7, attn="sdpa"), TokenPruningConfig(layer=2, keep_ratio=0.5, scorer="mlp", scorer_hidden=16)
    )
    with torch.no_grad():  # non-default scorer weights
        for p in pruned.scorer.parameters():
            p.add_(0.3)
    pruned.eval()
    batch = make_batch(3, 14, lengths=[14, 8, 4], seed=11)
    with torch.no_grad():
        ref = pruned(**batch)
    d = pruned.save_pretrained(tmp_path / "pruned")
    assert {p.name for p in d.iterdir()} >= {"config.json", "model.safetensors", "token_pruner.safetensors", "token_pruning.json"}
    meta = json.loads((d / "token_pruning.json").read_text())
    assert meta["pruning"]["keep_ratio"] == 0.5 and meta["architecture"] == "BertForSequenceClassification"
    again = load_pruned_model(d)
    assert not again.training and again.pruning_config == pruned.pruning_config
    with torch.no_grad():
        out = again(**batch)
    assert torch.equal(out.logits, ref.logits)
    assert torch.equal(out.kept_positions, ref.kept_positions)
    # the directory is also a plain Hugging Face model directory (the unpruned model)
    hf = transformers.BertForSequenceClassification.from_pretrained(str(d))
    assert torch.equal(hf.classifier.weight, pruned.model.classifier.weight)


def test_load_rejects_bad_directories(tmp_path):
    with pytest.raises(EdgekdValueError, match="token_pruning.json"):
        load_pruned_model(tmp_path)
    pruned = apply_token_pruning(tiny_classifier(), TokenPruningConfig(layer=1, k=4))
    d = pruned.save_pretrained(tmp_path / "m")
    meta = json.loads((d / "token_pruning.json").read_text())
    (d / "token_pruning.json").write_text(json.dumps({**meta, "architecture": "GPT2Model"}))
    with pytest.raises(EdgekdValueError, match="architecture"):
        load_pruned_model(d)
    (d / "token_pruning.json").write_text(json.dumps({**meta, "pruning": {**meta["pruning"], "layer": -1}}))
    with pytest.raises(EdgekdValueError, match="layer"):
        load_pruned_model(d)
    (d / "token_pruning.json").write_text("{not json")
    with pytest.raises(EdgekdValueError, match="JSON"):
        load_pruned_model(d)


def test_config_validation_and_json_round_trip():
    cfg = TokenPruningConfig(layer=3, keep_ratio=0.5, num_samples=200, sigma=0.2)
    assert TokenPruningConfig.from_json(cfg.to_json()) == cfg
    assert cfg.num_kept(512) == 256 and cfg.num_kept(7) == 4 and cfg.num_kept(1) == 1
    assert TokenPruningConfig(layer=0, keep_ratio=1 / 3).num_kept(10) == 4
    assert TokenPruningConfig(layer=0, k=50).num_kept(10) == 10
    bad = [
        dict(layer=1),
        dict(layer=1, keep_ratio=0.5, k=3),
        dict(layer=1, keep_ratio=0.0),
        dict(layer=1, keep_ratio=1.5),
        dict(layer=1, k=0),
        dict(layer=-1, k=2),
        dict(layer=1, k=2, scorer="attention"),
        dict(layer=1, k=2, sigma=0.0),
        dict(layer=1, k=2, num_samples=0),
        dict(layer=1, k=2, sigma_schedule="cosine"),
        dict(layer=1, k=2, estimator="magic"),
        dict(layer=1, k=2, keep_cls="yes"),
        dict(layer=True, k=2),
    ]
    for kwargs in bad:
        with pytest.raises(EdgekdValueError):
            TokenPruningConfig(**kwargs)
    with pytest.raises(EdgekdValueError, match="unknown"):
        TokenPruningConfig.from_dict({"layer": 1, "k": 2, "ratio": 0.5})


def test_apply_rejects_bad_models_and_inputs():
    with pytest.raises(EdgekdValueError, match="BertModel"):
        apply_token_pruning(torch.nn.Linear(2, 2), TokenPruningConfig(layer=1, k=2))
    with pytest.raises(EdgekdValueError, match="num_hidden_layers"):
        apply_token_pruning(tiny_classifier(), TokenPruningConfig(layer=4, k=2))
    pruned = apply_token_pruning(tiny_classifier(), {"layer": 1, "keep_ratio": 0.5})
    batch = make_batch(2, 8)
    with pytest.raises(EdgekdValueError, match="attention_mask"):
        pruned(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"][:, :5])
    with pytest.raises(EdgekdValueError, match="input_ids"):
        pruned()
