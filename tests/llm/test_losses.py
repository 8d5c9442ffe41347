"""edgekd.llm.losses: every loss against a hand computation (plain Python floats, float64)."""
from __future__ import annotations

import math

import pytest
import torch

from edgekd.errors import EdgekdValueError
from edgekd.llm import LOSSES, KDLossConfig, SparseTeacher, kd_loss
from edgekd.ops import kd_math

# ------------------------------------------------------------------------------------------
# hand computations: one position, lists of probabilities


def _softmax(xs, tau=1.0):
    m = max(x / tau for x in xs)
    e = [math.exp(x / tau - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def _kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def _head_mask(p, mass, exclusive):
    order = sorted(range(len(p)), key=lambda i: -p[i])
    keep, c = set(), 0.0
    for i in order:
        prev, c = c, c + p[i]
        if (prev < mass) if exclusive else (c <= mass):
            keep.add(i)
        else:
            break
    return [i in keep for i in range(len(p))]


def hand(loss, p, q, beta=0.5, alpha=0.1):
    if loss == "forward_kl":
        return _kl(p, q)
    if loss == "reverse_kl":
        return _kl(q, p)
    if loss == "jsd":
        if beta == 0:
            return _kl(p, q)
        if beta == 1:
            return _kl(q, p)
        m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    if loss == "tv":
        return 0.5 * sum(abs(a - b) for a, b in zip(p, q))
    if loss == "skew_forward_kl":
        return _kl(p, [alpha * a + (1 - alpha) * b for a, b in zip(p, q)])
    if loss == "skew_reverse_kl":
        return _kl(q, [(1 - alpha) * a + alpha * b for a, b in zip(p, q)])
    if loss == "akl":
        head = _head_mask(p, 0.5, exclusive=False)
        gh = sum(abs(a - b) for a, b, h in zip(p, q, head) if h)
        gt = sum(abs(a - b) for a, b, h in zip(p, q, head) if not h)
        return gh / (gh + gt) * _kl(p, q) + gt / (gh + gt) * _kl(q, p)
    if loss == "clipped_kl":
        keep = _head_mask(p, 1 - alpha, exclusive=True)
        pk = [a for a, k in zip(p, keep) if k] + [sum(a for a, k in zip(p, keep) if not k)]
        qk = [b for b, k in zip(q, keep) if k] + [sum(b for b, k in zip(q, keep) if not k)]
        return _kl(pk, qk)
    raise KeyError(loss)


STUDENT = [[0.3, -1.2, 2.0, 0.5, -0.1], [1.5, 0.2, -0.7, 0.0, 0.9], [-2.0, 0.4, 0.1, 1.1, 0.3]]
TEACHER = [[1.0, -0.5, 2.5, -1.0, 0.2], [0.1, 1.7, -0.2, 0.6, -1.5], [0.5, 0.5, -1.0, 2.0, 0.0]]


_LOSS_BETA = [(name, b) for name in LOSSES for b in ((0.0, 0.3, 1.0) if name == "jsd" else (0.3,))]


@pytest.mark.parametrize("loss,beta", _LOSS_BETA)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_every_loss_matches_hand_computation(loss, tau, beta):
    x = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    got = kd_loss(x, t, loss=loss, temperature=tau, beta=beta, alpha=0.2)
    want = sum(
        tau * tau * hand(loss, _softmax(tr, tau), _softmax(sr, tau), beta=beta, alpha=0.2)
        for sr, tr in zip(STUDENT, TEACHER)
    ) / len(STUDENT)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_jsd_endpoints_are_the_two_kls():
    x = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    assert float(kd_loss(x, t, loss="jsd", beta=0.0)) == float(kd_loss(x, t, loss="forward_kl"))
    assert float(kd_loss(x, t, loss="jsd", beta=1.0)) == float(kd_loss(x, t, loss="reverse_kl"))
    # the mixture formula is continuous towards the ends only up to the 1/beta scale; JSD(0.5) is
    # bounded by log 2
    assert 0 < float(kd_loss(x, t, loss="jsd", beta=0.5)) < math.log(2)


def test_skew_alpha_zero_is_plain_kl():
    x = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    assert float(kd_loss(x, t, loss="skew_forward_kl", alpha=0.0)) == pytest.approx(float(kd_loss(x, t)), rel=1e-14)
    assert float(kd_loss(x, t, loss="skew_reverse_kl", alpha=0.0)) == pytest.approx(
        float(kd_loss(x, t, loss="reverse_kl")), rel=1e-14
    )


def test_mask_labels_and_ce_mixing():
    x = torch.tensor(STUDENT, dtype=torch.float64).unsqueeze(0)  # (1, 3, 5)
    t = torch.tensor(TEACHER, dtype=torch.float64).unsqueeze(0)
    mask = torch.tensor([[1, 0, 1]])
    labels = torch.tensor([[2, 4, -100]])
    kd_rows = [hand("forward_kl", _softmax(tr), _softmax(sr)) for sr, tr in zip(STUDENT, TEACHER)]
    assert float(kd_loss(x, t, mask=mask)) == pytest.approx((kd_rows[0] + kd_rows[2]) / 2, rel=1e-12)
    # labels: -100 is invalid too; with the mask only position 0 is valid
    ce0 = -math.log(_softmax(STUDENT[0])[2])
    got = kd_loss(x, t, mask=mask, labels=labels, ce_weight=0.25)
    assert float(got) == pytest.approx(0.75 * kd_rows[0] + 0.25 * ce0, rel=1e-12)
    got = kd_loss(x, t, labels=labels, ce_weight=1.0)
    ce1 = -math.log(_softmax(STUDENT[1])[4])
    assert float(got) == pytest.approx((ce0 + ce1) / 2, rel=1e-12)


def test_masked_positions_get_no_gradient():
    x = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 7, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]])
    kd_loss(x, t, mask=mask, loss="akl").backward()
    assert torch.all(x.grad[mask == 0] == 0)
    assert torch.all(x.grad[mask == 1].abs().sum(-1) > 0)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_sparse_k_equals_v_is_dense(loss):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 9, dtype=torch.float64, generator=g, requires_grad=True)
    t = 2 * torch.randn(6, 9, dtype=torch.float64, generator=g)
    tau = 1.5
    lp = torch.log_softmax(t / tau, -1)
    vals, ids = lp.topk(9, dim=-1)
    st = SparseTeacher(ids, vals, torch.full((6,), float("-inf"), dtype=torch.float64), temperature=tau)
    dense = kd_loss(x, t, loss=loss, temperature=tau)
    (gd,) = torch.autograd.grad(dense, x)
    sparse = kd_loss(x, st, loss=loss, temperature=tau)
    (gs,) = torch.autograd.grad(sparse, x)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gs, gd, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_sparse_tail_is_one_bucket(loss):
    """k < V: the loss equals the dense loss on the (k + 1)-bucket distributions, by hand."""
    x = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    lp = torch.log_softmax(t, -1)
    vals, ids = lp.topk(2, dim=-1)
    tail = torch.log1p(-vals.exp().sum(-1))
    got = kd_loss(x, SparseTeacher(ids, vals, tail), loss=loss, alpha=0.2)
    want = 0.0
    for r in range(3):
        p, q = _softmax(TEACHER[r]), _softmax(STUDENT[r])
        top = ids[r].tolist()
        pb = [p[i] for i in top] + [sum(p[i] for i in range(5) if i not in top)]
        qb = [q[i] for i in top] + [sum(q[i] for i in range(5) if i not in top)]
        want += hand(loss, pb, qb, alpha=0.2)
    assert float(got) == pytest.approx(want / 3, rel=1e-12)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_analytic_gradient_matches_autograd(loss):
    """kd_math.divergence_grad (used by the fused op) is the gradient of kd_math.divergence."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    lp = torch.log_softmax(torch.randn(5, 8, dtype=torch.float64, generator=g) * 2, -1)
    lq = torch.log_softmax(x, -1)
    (auto,) = torch.autograd.grad(kd_math.divergence(lp, lq, loss, 0.3, 0.2).sum(), x)
    G = kd_math.divergence_grad(lp, lq.detach(), loss, 0.3, 0.2)
    analytic = kd_math.logits_grad_from_buckets(G, x.detach(), torch.logsumexp(x.detach(), -1), None, lq.detach())
    torch.testing.assert_close(analytic, auto, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("loss", ["forward_kl", "jsd", "akl", "clipped_kl"])
def test_gradient_accumulation_is_identical(loss):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 11, dtype=torch.float64, generator=g)
    t = torch.randn(4, 6, 11, dtype=torch.float64, generator=g)
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, 1:] = 0  # uneven numbers of valid tokens per micro-batch
    labels = torch.randint(0, 11, (4, 6), generator=g)
    kw = dict(loss=loss, temperature=2.0, ce_weight=0.3)
    xa = x.clone().requires_grad_(True)
    full = kd_loss(xa, t, mask=mask, labels=labels, **kw)
    full.backward()
    xb = x.clone().requires_grad_(True)
    n = int(mask.sum())
    acc = 0.0
    for sl in (slice(0, 1), slice(1, 3), slice(3, 4)):
        part = kd_loss(xb[sl], t[sl], mask=mask[sl], labels=labels[sl], num_valid_tokens=n, **kw)
        part.backward()
        acc = acc + part.detach()
    torch.testing.assert_close(acc, full.detach(), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-13, atol=1e-15)


def test_temperature_scales_by_tau_squared_and_softens_both_sides():
    x = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    got = kd_loss(x, t, temperature=3.0)
    # softening both sides by tau is the same as dividing both logits by tau at tau = 1
    assert float(got) == pytest.approx(9.0 * float(kd_loss(x / 3.0, t / 3.0)), rel=1e-13)


def test_config_defaults_and_validation():
    cfg = KDLossConfig()
    cfg.validate()
    assert (cfg.loss, cfg.temperature, cfg.beta, cfg.alpha, cfg.ce_weight, cfg.topk) == (
        "forward_kl", 1.0, 0.5, 0.1, 0.0, None)
    with pytest.raises(EdgekdValueError, match="unknown loss 'kl'"):
        KDLossConfig(loss="kl").validate()
    with pytest.raises(EdgekdValueError, match="topk"):
        KDLossConfig(topk=0).validate()


def test_bad_inputs_name_the_problem():
    x = torch.randn(2, 3, 5)
    with pytest.raises(EdgekdValueError, match="unknown loss 'klx'"):
        kd_loss(x, torch.randn(2, 3, 5), loss="klx")
    with pytest.raises(EdgekdValueError, match="vocabulary mismatch"):
        kd_loss(x, torch.randn(2, 3, 7))
    with pytest.raises(EdgekdValueError, match="teacher logits contain NaN"):
        kd_loss(x, torch.full((2, 3, 5), float("nan")))
    with pytest.raises(EdgekdValueError, match="student_logits contain NaN"):
        kd_loss(torch.full((2, 3, 5), float("nan")), torch.randn(2, 3, 5))
    with pytest.raises(EdgekdValueError, match="k larger than the vocabulary"):
        ids = torch.arange(6).expand(2, 3, 6)
        kd_loss(x, SparseTeacher(ids, torch.zeros(2, 3, 6), torch.zeros(2, 3)))
    with pytest.raises(EdgekdValueError, match="empty input"):
        kd_loss(torch.randn(2, 0, 5), torch.randn(2, 0, 5))
    with pytest.raises(EdgekdValueError, match="no valid positions"):
        kd_loss(x, torch.randn(2, 3, 5), mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(EdgekdValueError, match="temperature"):
        kd_loss(x, torch.randn(2, 3, 5), temperature=0.0)
    with pytest.raises(EdgekdValueError, match="ce_weight > 0 needs labels"):
        kd_loss(x, torch.randn(2, 3, 5), ce_weight=0.5)
    with pytest.raises(EdgekdValueError, match="out of the student vocabulary"):
        kd_loss(x, SparseTeacher(torch.full((2, 3, 2), 9), torch.zeros(2, 3, 2), torch.zeros(2, 3)))
    with pytest.raises(EdgekdValueError, match="temperature 1.0 but the loss uses temperature 2.0"):
        kd_loss(x, SparseTeacher(torch.zeros(2, 3, 1, dtype=torch.long), torch.zeros(2, 3, 1), torch.zeros(2, 3)),
                temperature=2.0)
