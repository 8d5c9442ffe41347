"""The trainer's on-policy mode (GKD lambda) and its fused path (edgekd::fused_linear_kd)."""
import copy

import pytest
import torch

from edgekd.errors import EdgekdValueError
from edgekd.llm.losses import kd_loss
from edgekd.llm.onpolicy import on_policy_step, prompt_lengths, sample_completions, sampling_seed
from edgekd.llm import trainer as T
from edgekd.llm.trainer import IGNORE, cached_teacher, token_data, train_causal_lm

from .test_trainer import _cfg as base_cfg
from .test_trainer import _params


def _prompted(n=6, t=8, seed=0):
    """Right-padded rows whose first 2-4 tokens are a prompt (labels -100) and the rest a completion."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 48, (n, t), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    for i in range(n):
        mask[i, t - (i % 3):] = 0
        labels[i, :2 + i % 3] = IGNORE
    return token_data(ids, mask, labels.masked_fill(mask == 0, IGNORE))


def _cfg(loss="forward_kl", *, batch_size=3, grad_accum=2, **kw):
    return base_cfg(loss, batch_size=batch_size, grad_accum=grad_accum, **kw)


def test_lambda_zero_is_exactly_the_off_policy_run(make_llama):
    teacher, data = make_llama(seed=5), _prompted()
    runs = []
    for kw in ({}, {"on_policy_lambda": 0.0, "max_new_tokens": 3, "sampling_temperature": 0.7}):
        s = make_llama(seed=1)
        r = train_causal_lm(s, data, teacher=teacher, config=_cfg(steps=2, **kw), progress=False)
        runs.append((_params(s), r.loop.losses))
    assert runs[0][1] == runs[1][1]
    for a, b in zip(runs[0][0], runs[1][0]):
        assert torch.equal(a, b)


def test_sampled_completions_mask_the_prompt_and_padding(make_llama):
    data = _prompted()
    s = make_llama(seed=1)
    p = prompt_lengths(data["labels"], data["attention_mask"])
    assert p.tolist() == [2 + i % 3 for i in range(6)]
    a = sample_completions(s, data, max_new_tokens=4, temperature=1.0, seed=3)
    b = sample_completions(s, data, max_new_tokens=4, temperature=1.0, seed=3)
    for k in a:
        assert torch.equal(a[k], b[k])  # seeded
    for i in range(6):
        n = int(a["attention_mask"][i].sum())
        assert torch.equal(a["input_ids"][i, :p[i]], data["input_ids"][i, :p[i]])  # the prompt is kept
        assert (a["labels"][i, :p[i]] == IGNORE).all() and (a["labels"][i, n:] == IGNORE).all()
        gen = a["labels"][i, p[i]:n]
        assert 1 <= gen.numel() <= 4 and torch.equal(gen, a["input_ids"][i, p[i]:n])
        assert (gen[:-1] != 2).all()  # stops at the first EOS (id 2), which stays a target


def test_lambda_one_trains_on_student_samples_scored_by_the_teacher(make_llama):
    teacher, data = make_llama(seed=5), _prompted()
    cfg = _cfg(on_policy_lambda=1.0, max_new_tokens=4, loss="reverse_kl")
    s0 = make_llama(seed=1)
    # the loss of step 0, by hand: the student's samples of that step, KD on the generated tokens only
    gen = sample_completions(copy.deepcopy(s0), data, max_new_tokens=4, temperature=1.0,
                             seed=sampling_seed(cfg.loop.seed, 0))
    with torch.no_grad():
        zs = s0(input_ids=gen["input_ids"], attention_mask=gen["attention_mask"]).logits[:, :-1]
        zt = teacher(input_ids=gen["input_ids"], attention_mask=gen["attention_mask"]).logits[:, :-1]
    lab = gen["labels"][:, 1:]
    want = kd_loss(zs, zt, loss="reverse_kl", mask=lab != IGNORE)
    outs = []
    for _ in range(2):
        s = make_llama(seed=1)
        r = train_causal_lm(s, data, teacher=teacher, config=cfg, progress=False)
        outs.append((_params(s), r))
    r = outs[0][1]
    assert abs(r.loop.losses[0] - float(want)) < 1e-5 * max(1.0, abs(float(want)))
    assert r.tokens_trained == int((lab != IGNORE).sum())  # only the generated tokens count
    assert outs[0][1].loop.losses == outs[1][1].loop.losses  # seeded
    for a, b in zip(outs[0][0], outs[1][0]):
        assert torch.equal(a, b)


def test_the_coin_is_seeded_with_probability_lambda():
    flips = [on_policy_step(0.3, 7, k) for k in range(400)]
    assert flips == [on_policy_step(0.3, 7, k) for k in range(400)]
    assert 0.2 < sum(flips) / 400 < 0.4
    assert not any(on_policy_step(0.0, 7, k) for k in range(50)) and all(on_policy_step(1.0, 7, k) for k in range(50))


def test_on_policy_bad_settings(tmp_path, make_llama):
    teacher, data = make_llama(seed=5), _prompted()
    for kw in ({"on_policy_lambda": 1.5}, {"on_policy_lambda": -0.1}, {"on_policy_lambda": 0.5, "max_new_tokens": 0},
               {"on_policy_lambda": 0.5, "sampling_temperature": 0.0}):
        with pytest.raises(EdgekdValueError, match="on_policy_lambda|max_new_tokens|sampling_temperature"):
            train_causal_lm(make_llama(seed=1), data, teacher=teacher, config=_cfg(**kw), progress=False)
    with pytest.raises(EdgekdValueError, match="live teacher"):
        train_causal_lm(make_llama(seed=1), data, teacher=teacher, config=_cfg(on_policy_lambda=0.5),
                        cache_dir=str(tmp_path / "c"), progress=False)
    cache = cached_teacher(teacher, data, str(tmp_path / "c2"), topk=8)
    with pytest.raises(EdgekdValueError, match="live teacher"):
        train_causal_lm(make_llama(seed=1), data, teacher=cache, config=_cfg(on_policy_lambda=1.0), progress=False)
    with pytest.raises(EdgekdValueError, match="loss='ce'"):
        train_causal_lm(make_llama(seed=1), data, config=_cfg("ce", on_policy_lambda=1.0), progress=False)


@pytest.mark.parametrize("loss,ce_weight,tie", [("forward_kl", 0.0, True), ("jsd", 0.3, False),
                                                ("akl", 0.0, True)])
def test_fused_path_matches_the_unfused_loss_and_gradients(make_llama, loss, ce_weight, tie):
    teacher, data = make_llama(seed=5, tie=tie), _prompted()
    losses = []
    for fused in (False, True):  # the step's loss through the trainer (micro-batches of 3, accumulated)
        r = train_causal_lm(make_llama(seed=1, tie=tie), data, teacher=teacher,
                            config=_cfg(loss, ce_weight=ce_weight, fused=fused, fused_chunk_size=5, temperature=2.0),
                            progress=False)
        losses.append(r.loop.losses[0])
    assert abs(losses[0] - losses[1]) < 1e-5 * max(1.0, abs(losses[0]))
    # the gradients of every parameter (a tied lm_head's reaches the embedding); compared directly, since
    # AdamW's first step is about lr * sign(grad) and flips on gradients that are zero up to rounding
    grads = []
    for fused in (False, True):
        s = make_llama(seed=1, tie=tie)
        cfg = _cfg(loss, ce_weight=ce_weight, fused=fused, fused_chunk_size=5, temperature=2.0)
        lab = data["labels"][:, 1:]
        batch = {**data, "idx": list(range(6))}
        with torch.no_grad():
            zt = teacher(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits[:, :-1]
        n = int((lab != IGNORE).sum())
        if fused:
            l = T._fused_kd(s, batch, zt, lab, cfg, n)
        else:
            zs = s(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits[:, :-1]
            l = kd_loss(zs, zt, loss=loss, temperature=2.0, mask=lab != IGNORE, num_valid_tokens=n,
                        ce_weight=ce_weight, labels=lab)
        l.backward()
        grads.append({k: p.grad.clone() for k, p in s.named_parameters()})
    for k, g in grads[0].items():
        scale = float(g.abs().max()) + 1e-12
        torch.testing.assert_close(grads[1][k], g, rtol=1e-4, atol=1e-5 * scale)


def test_fused_path_with_the_sparse_cache_and_on_policy(tmp_path, make_llama):
    teacher, data = make_llama(seed=5), _prompted()
    cache = cached_teacher(teacher, data, str(tmp_path / "c"), topk=16)
    losses = []
    for fused in (False, True):
        r = train_causal_lm(make_llama(seed=1), data, teacher=cache, config=_cfg(fused=fused), progress=False)
        losses.append(r.loop.losses[0])
    assert abs(losses[0] - losses[1]) < 1e-5 * max(1.0, abs(losses[0]))
    losses = []
    for fused in (False, True):
        r = train_causal_lm(make_llama(seed=1), data, teacher=teacher,
                            config=_cfg(fused=fused, on_policy_lambda=1.0, max_new_tokens=3), progress=False)
        losses.append(r.loop.losses[0])
    assert abs(losses[0] - losses[1]) < 1e-5 * max(1.0, abs(losses[0]))


def test_fused_bad_settings(make_llama):
    with pytest.raises(EdgekdValueError, match="fused=True"):
        train_causal_lm(make_llama(seed=1), _prompted(), config=_cfg("ce", fused=True), progress=False)
    s = make_llama(seed=1)
    s.config.final_logit_softcapping = 30.0
    with pytest.raises(EdgekdValueError, match="final_logit_softcapping"):
        train_causal_lm(s, _prompted(), teacher=make_llama(seed=5), config=_cfg(fused=True), progress=False)
