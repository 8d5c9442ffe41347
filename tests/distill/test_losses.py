"""Each loss against a hand computation with plain math."""
import math

import pytest
import torch

from edgekd.distill.losses import cross_entropy, distillation_loss, kl_loss, mse_loss, xai_loss
from edgekd.errors import EdgekdValueError

S = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 1.5]])  # student logits
T = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])  # teacher logits
Y = torch.tensor([1, 2])


def _softmax(xs, tau=1.0):
    e = [math.exp(x / tau) for x in xs]
    z = sum(e)
    return [v / z for v in e]


def _ce():
    return (-math.log(_softmax([1, 2, 0])[1]) - math.log(_softmax([0.5, -1, 1.5])[2])) / 2


def _kl(tau):
    tot = 0.0
    for s, t in zip(S.tolist(), T.tolist()):
        ps, pt = _softmax(s, tau), _softmax(t, tau)
        tot += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    return tau * tau * tot / 2


def test_cross_entropy():
    assert cross_entropy(S, Y).item() == pytest.approx(_ce(), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_kl_with_temperature(tau):
    assert kl_loss(S, T, tau).item() == pytest.approx(_kl(tau), rel=1e-5)
    assert kl_loss(T, T, tau).item() == pytest.approx(0.0, abs=1e-7)


def test_mse():
    want = sum((a - b) ** 2 for a, b in zip(S.flatten().tolist(), T.flatten().tolist())) / 6
    assert mse_loss(S, T).item() == pytest.approx(want, rel=1e-6)


# text 1: t=(1,2), s=(2,1) over 2 valid words -> cos = 4/5 -> 0.5*(1-0.8) = 0.1 (padding ignored)
# text 2: t=(1), s=(-1) over 1 valid word -> cos = -1 -> 1.0
TA = torch.tensor([[1.0, 2.0, 7.0], [1.0, 3.0, 3.0]])
SA = torch.tensor([[2.0, 1.0, -5.0], [-1.0, 9.0, 9.0]], requires_grad=True)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_xai_loss_over_valid_tokens():
    assert xai_loss(TA, SA, MASK).item() == pytest.approx((0.1 + 1.0) / 2, rel=1e-6)
    assert xai_loss(TA, SA, MASK, torch.tensor([True, False])).item() == pytest.approx(0.1, rel=1e-6)
    assert xai_loss(TA, SA, MASK, torch.tensor([False, False])).item() == 0.0
    # scale of either side does not matter (cosine)
    assert xai_loss(10 * TA, 0.1 * SA, MASK).item() == pytest.approx(0.55, rel=1e-5)
    # gradients do not flow into padding
    xai_loss(TA, SA, MASK).backward()
    assert SA.grad[0, 2].item() == 0.0 and SA.grad[1, 1:].abs().sum().item() == 0.0


def test_method_combinations():
    a, tau = 0.3, 2.0
    kw = dict(alpha=a, tau=tau, student_scores=SA.detach(), teacher_attributions=TA, attention_mask=MASK)
    ce, kl, xai = _ce(), _kl(tau), 0.55
    mse = mse_loss(S, T).item()
    assert distillation_loss("none", S, Y, T, **kw)[0].item() == pytest.approx(ce, rel=1e-6)
    assert distillation_loss("kl", S, Y, T, **kw)[0].item() == pytest.approx((1 - a) * ce + a * kl, rel=1e-5)
    assert distillation_loss("mse", S, Y, T, **kw)[0].item() == pytest.approx((1 - a) * ce + a * mse, rel=1e-5)
    loss, parts = distillation_loss("dixtill", S, Y, T, **kw)
    assert loss.item() == pytest.approx((1 - a) * ce + a * (kl + xai), rel=1e-5)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5) and parts["xai"] == pytest.approx(xai, rel=1e-5)
    code = distillation_loss("dixtill", S, Y, T, variant="code", **kw)[0].item()
    assert code == pytest.approx(0.1 * ce + 0.9 * (1 - math.exp(-kl)) + 0.9 * xai, rel=1e-5)


def test_bad_inputs():
    with pytest.raises(EdgekdValueError, match="method must be one of"):
        distillation_loss("foo", S, Y, T)
    with pytest.raises(EdgekdValueError, match="needs teacher_logits"):
        distillation_loss("kl", S, Y, None)
    with pytest.raises(EdgekdValueError, match="needs student_scores"):
        distillation_loss("dixtill", S, Y, T)
    with pytest.raises(EdgekdValueError, match="tau must be > 0"):
        kl_loss(S, T, 0.0)
    with pytest.raises(EdgekdValueError, match="shapes differ"):
        mse_loss(S, T[:1])
    with pytest.raises(EdgekdValueError, match="alpha must be in"):
        distillation_loss("kl", S, Y, T, alpha=1.5)


def _xai_reference(t, s, m, absolute, centered):
    """Per-text 0.5*(1 - cos) in float64 over the valid words only (no masking tricks)."""
    out = []
    for ti, si, mi in zip(t.double(), s.double(), m.bool()):
        a, b = ti[mi], si[mi]
        if absolute:
            a = a.abs()
        if centered:
            a, b = a - a.mean(), b - b.mean()
        cos = (a @ b) / (a.norm().clamp_min(1e-8) * b.norm().clamp_min(1e-8))
        out.append(0.5 * (1 - cos))
    return torch.stack(out).mean()


@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("centered", [False, True])
def test_xai_loss_forms_match_float64_reference(absolute, centered):
    g = torch.Generator().manual_seed(3)
    t = torch.randn(5, 9, generator=g)
    s = torch.randn(5, 9, generator=g, requires_grad=True)
    m = torch.ones(5, 9)
    for i, n in enumerate([9, 1 + 1, 5, 3, 7]):
        m[i, n:] = 0
    got = xai_loss(t, s, m, absolute=absolute, centered=centered)
    ref = _xai_reference(t, s.detach(), m, absolute, centered)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    got.backward()
    assert torch.isfinite(s.grad).all() and (s.grad[m == 0] == 0).all()


def test_xai_centered_is_shift_invariant_like_softmax():
    t, s, m = torch.randn(3, 6), torch.randn(3, 6), torch.ones(3, 6)
    m[1, 4:] = 0
    shifted = s + 7.0  # the attention softmax cannot see this shift; the centred loss must not either
    assert xai_loss(t, shifted, m, centered=True).item() == pytest.approx(xai_loss(t, s, m, centered=True).item(),
                                                                          rel=1e-5)
    assert xai_loss(t, shifted, m).item() != pytest.approx(xai_loss(t, s, m).item(), rel=1e-3)
    # |attributions|: a sign flip of the teacher changes nothing
    assert xai_loss(-t, s, m, absolute=True).item() == pytest.approx(xai_loss(t, s, m, absolute=True).item())


@pytest.mark.parametrize("absolute,centered", [(False, False), (True, False), (False, True), (True, True)])
def test_loss_sums_carry_the_xai_forms(absolute, centered):
    """The data-parallel sums (loss_sums/combine_sums) give distillation_loss for every L_XAI form."""
    from edgekd.distill.losses import combine_sums, loss_sums

    g = torch.Generator().manual_seed(5)
    s_log, t_log = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ta, sa = torch.randn(6, 7, generator=g), torch.randn(6, 7, generator=g)
    m = torch.ones(6, 7)
    m[2, 3:] = 0
    am = torch.tensor([True, True, False, True, True, True])
    ref, _ = distillation_loss("dixtill", s_log, labels, t_log, alpha=0.7, tau=2.0, student_scores=sa,
                               teacher_attributions=ta, attention_mask=m, attribution_mask=am,
                               xai_absolute=absolute, xai_centered=centered)
    sums = loss_sums("dixtill", s_log, labels, t_log, tau=2.0, student_scores=sa, teacher_attributions=ta,
                     attention_mask=m, attribution_mask=am, xai_absolute=absolute, xai_centered=centered)
    got = combine_sums("dixtill", sums, 6, int(am.sum()), num_classes=3, alpha=0.7)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
