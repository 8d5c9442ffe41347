import copy
import math

import pytest
import torch

from edgekd.errors import EdgekdValueError
from edgekd.llm.trainer import (IGNORE, LLMTrainConfig, encode_pairs, evaluate_perplexity, pack_texts, token_data,
                                train_causal_lm)


def _data(n=8, t=9, seed=0):
    """Sequences of unequal valid length (right padding), so the token count per step varies."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 48, (n, t), generator=g)
    mask = torch.ones_like(ids)
    for i in range(n):
        mask[i, t - (i % 4) * 2:] = 0
    return token_data(ids, mask)


def _cfg(loss="ce", *, batch_size=4, grad_accum=1, steps=1, **kw):
    c = LLMTrainConfig(loss=loss, **kw)
    c.loop.batch_size, c.loop.grad_accum, c.loop.max_steps = batch_size, grad_accum, steps
    c.loop.shuffle, c.loop.warmup_ratio, c.loop.lr, c.loop.schedule = "none", 0.0, 1e-2, "constant"
    return c


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


@pytest.mark.parametrize("loss", ["ce", "forward_kl"])
def test_grad_accumulation_takes_the_step_of_the_whole_batch(make_llama, loss):
    # float64: AdamW divides by sqrt(v), so in fp32 a near-zero gradient summed in another order
    # (micro-batches) can move a weight by ~1e-5 on one CPU and not on another; in float64 the orders
    # agree to ~1e-12, while a wrong accumulation scale is still off by orders of magnitude more
    teacher = make_llama(seed=5).double() if loss != "ce" else None
    data = _data()
    outs = []
    for bs, acc in ((8, 1), (4, 2), (2, 4), (3, 3)):  # (3, 3): micro-batches of 3, 3, 2
        s = make_llama(seed=1).double()
        r = train_causal_lm(s, data, teacher=teacher, config=_cfg(loss, batch_size=bs, grad_accum=acc), progress=False)
        outs.append((_params(s), r.loop.losses[0]))
    for params, l0 in outs[1:]:
        assert abs(l0 - outs[0][1]) < 1e-5 * abs(outs[0][1])
        for a, b in zip(params, outs[0][0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_step_loss_is_the_mean_over_valid_tokens(make_llama):
    data = _data()
    s = make_llama(seed=1)
    with torch.no_grad():
        logits = s(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits[:, :-1]
    lab = data["labels"][:, 1:]
    want = torch.nn.functional.cross_entropy(logits.transpose(1, 2), lab, ignore_index=IGNORE)  # token mean
    r = train_causal_lm(s, data, config=_cfg("ce", batch_size=2, grad_accum=4), progress=False)
    assert abs(r.loop.losses[0] - float(want)) < 1e-5
    assert r.tokens_trained == int((lab != IGNORE).sum())


def test_kd_against_itself_is_zero_and_cached_teacher_matches_model(make_llama):
    data = _data()
    teacher = make_llama(seed=1)
    s = make_llama(seed=1)
    r = train_causal_lm(s, data, teacher=teacher, config=_cfg("forward_kl"), progress=False)
    assert abs(r.loop.losses[0]) < 1e-6
    # a teacher callable (cached logits, the teacher run once) takes the same steps as the model
    # float64 (see test_grad_accumulation_takes_the_step_of_the_whole_batch): the cached logits come
    # from one batch of 8, the live teacher's from micro-batches of 2, which differ in fp32 rounding
    teacher = teacher.double()
    with torch.no_grad():
        cached = teacher(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits[:, :-1]
    a, b = make_llama(seed=2).double(), make_llama(seed=2).double()
    cfg = _cfg("reverse_kl", batch_size=2, grad_accum=2, steps=2, temperature=2.0)
    ra = train_causal_lm(a, data, teacher=teacher, config=cfg, progress=False)
    rb = train_causal_lm(b, data, teacher=lambda idx: cached[idx], config=copy.deepcopy(cfg), progress=False)
    assert ra.loop.losses == pytest.approx(rb.loop.losses, rel=1e-6)
    for x, y in zip(_params(a), _params(b)):
        torch.testing.assert_close(x, y)


def test_resume_gives_the_same_weights(tmp_path, make_llama):
    data = _data()
    cfg = _cfg("ce", batch_size=2, grad_accum=2, steps=4)
    full = make_llama(seed=1)
    r_full = train_causal_lm(full, data, config=cfg, progress=False)
    part = make_llama(seed=1)
    r1 = train_causal_lm(part, data, config=copy.deepcopy(cfg), checkpoint_dir=str(tmp_path), stop_after=2,
                         progress=False)
    assert r1.loop.steps == 2 and not r1.loop.finished
    resumed = make_llama(seed=7)  # other weights: all state comes from the checkpoint
    r2 = train_causal_lm(resumed, data, config=copy.deepcopy(cfg), checkpoint_dir=str(tmp_path), resume=True,
                         progress=False)
    assert r2.loop.resumed_from == 2 and r2.loop.steps == 4
    assert r2.loop.losses == pytest.approx(r_full.loop.losses, rel=1e-5)
    for a, b in zip(_params(resumed), _params(full)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_ce_training_lowers_heldout_perplexity(make_llama):
    data = _data(n=4, t=12)
    cfg = _cfg("ce", batch_size=4, steps=15)
    s = make_llama(seed=1)
    r = train_causal_lm(s, data, config=cfg, eval_data=data, progress=False)
    assert r.eval_after["perplexity"] < r.eval_before["perplexity"]
    ev = evaluate_perplexity(s, data)
    assert ev["perplexity"] == pytest.approx(math.exp(ev["eval_loss"]))
    assert ev["tokens"] == int((data["labels"][:, 1:] != IGNORE).sum())


def test_prompt_and_padding_are_masked(tokenizer):
    d = encode_pairs(tokenizer, [("w1 w2 w3", "w4 w5"), ("w6", "w7 w8 w9 w10")], max_length=16)
    ids, lab, mask = d["input_ids"], d["labels"], d["attention_mask"]
    assert ids.shape == (2, 6)
    assert lab[0].tolist() == [IGNORE] * 3 + [8, 9, 2]  # w4 w5 </s>
    assert lab[1].tolist() == [IGNORE, 11, 12, 13, 14, 2]
    assert mask[0].tolist() == [1] * 6 and mask[1].tolist() == [1] * 6
    d = encode_pairs(tokenizer, [("w1", "w2"), ("w1 w2 w3", "w4 w5 w6")], max_length=16)
    assert d["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert d["labels"][0].tolist() == [IGNORE, 6, 2] + [IGNORE] * 4


def test_pack_texts(tokenizer):
    d = pack_texts(tokenizer, ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9"], 4)
    assert d["input_ids"].tolist() == [[5, 6, 7, 2], [8, 9, 2, 10], [11, 12, 13, 2]]
    assert (d["labels"] == d["input_ids"]).all() and d["attention_mask"].all()
    with pytest.raises(EdgekdValueError, match="fewer than one sequence"):
        pack_texts(tokenizer, ["w1"], 8)


def test_bad_inputs(make_llama):
    data = _data()
    s = make_llama()
    with pytest.raises(EdgekdValueError, match="needs a teacher"):
        train_causal_lm(s, data, config=_cfg("forward_kl"), progress=False)
    with pytest.raises(EdgekdValueError, match="without a teacher"):
        train_causal_lm(s, data, teacher=make_llama(), config=_cfg("ce"), progress=False)
    with pytest.raises(EdgekdValueError, match="vocabulary"):
        train_causal_lm(s, data, teacher=make_llama(vocab=50), config=_cfg("forward_kl"), progress=False)
    with pytest.raises(EdgekdValueError, match="temperature"):
        train_causal_lm(s, data, teacher=make_llama(), config=_cfg("forward_kl", temperature=0.0), progress=False)
    with pytest.raises(EdgekdValueError, match="nope"):
        train_causal_lm(s, data, teacher=make_llama(), config=_cfg("nope"), progress=False)
    ids = torch.randint(4, 48, (2, 5))
    with pytest.raises(EdgekdValueError, match="no valid target tokens"):
        token_data(ids, labels=torch.full_like(ids, IGNORE))
    with pytest.raises(EdgekdValueError, match="at least 2 tokens"):
        token_data(ids[:, :1])
    with pytest.raises(EdgekdValueError, match="non-empty"):
        token_data(ids[:0])


def test_sparse_cache_runs_the_teacher_once(tmp_path, make_llama):
    data = _data()
    teacher = make_llama(seed=5).double()  # float64: see test_grad_accumulation_takes_the_step_of_the_whole_batch
    calls = []
    teacher.register_forward_hook(lambda m, a, o: calls.append(1))
    cfg = _cfg("forward_kl", batch_size=2, grad_accum=2, steps=4)  # 2 epochs over 8 sequences
    cfg.cache_topk, cfg.eval_batch_size = 48, 4  # k = V: the sparse teacher is exact
    a = make_llama(seed=1).double()
    ra = train_causal_lm(a, data, teacher=teacher, config=cfg, cache_dir=str(tmp_path), progress=False)
    assert len(calls) == 2  # 8 sequences in teacher batches of 4, once, not once per micro-batch
    b = make_llama(seed=1).double()
    rb = train_causal_lm(b, data, teacher=teacher, config=copy.deepcopy(cfg), progress=False)  # dense, every step
    assert len(calls) == 2 + 8
    assert ra.loop.losses == pytest.approx(rb.loop.losses, rel=1e-5)
    for x, y in zip(_params(a), _params(b)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    c = make_llama(seed=1).double()  # a second run reads the finished cache: no teacher pass at all
    train_causal_lm(c, data, teacher=teacher, config=copy.deepcopy(cfg), cache_dir=str(tmp_path), progress=False)
    assert len(calls) == 2 + 8


def test_sparse_cache_top_k_is_close_to_dense(tmp_path, make_llama):
    from edgekd.llm.trainer import cached_teacher

    data = _data()
    teacher = make_llama(seed=5)
    get = cached_teacher(teacher, data, str(tmp_path), topk=8, batch_size=3)
    st = get([6, 1])
    assert st.topk_ids.shape == (2, 8, 8) and st.tail_logmass.shape == (2, 8)
    with torch.no_grad():
        dense = torch.log_softmax(teacher(input_ids=data["input_ids"][[6, 1]],
                                          attention_mask=data["attention_mask"][[6, 1]]).logits[:, :-1], -1)
    valid = data["attention_mask"][[6, 1], :-1].bool()
    torch.testing.assert_close(st.topk_logprobs[valid], dense.topk(8, -1).values[valid], rtol=1e-5, atol=1e-5)
