"""Triton kernel of ``edgekd::fused_linear_kd`` (dense teacher) and its host launcher.

The launcher walks the rows in chunks of C: per chunk one cuBLAS GEMM gives the (C, V) student
logits in float32, :func:`_kd_rows_kernel` (one program per row, the vocabulary in blocks) turns
them in place into dL/dz and writes the row's loss, and two GEMMs add the chunk's share to
``grad_hidden`` and ``grad_weight``. The row kernel makes three passes over the vocabulary:

1. online log-sum-exp of the student logits / tau, the teacher logits / tau and (CE) the logits;
2. the divergence and the row sums its gradient needs (``S = sum G``; AKL's head/tail gaps; the
   clipped KL's merged mass and the student's log-mass on it);
3. ``dL/dz = c_kd (G - q S) + w (softmax(z) - onehot(label))`` written over the logits.

AKL's and the clipped KL's head/tail split is a per-row threshold on the *teacher logits* computed
by the caller (``edgekd.ops.kd_math.split_threshold``, a sort on the device, mapped to the smallest
kept logit, so that the kernel's comparison is exact whatever its exp rounding). Formulas: see
``edgekd/ops/kd_math.py``. Sparse teachers run the chunked PyTorch path of the op module.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import calculate_settings

# loss codes (kd_math.LOSS_NAMES order, after kd_math.effective_loss)
CODES = {"forward_kl": 0, "reverse_kl": 1, "jsd": 2, "tv": 3, "skew_forward_kl": 4, "skew_reverse_kl": 5,
         "akl": 6, "clipped_kl": 7}


#: the largest vocabulary block of a program (larger vocabularies loop over blocks)
MAX_BLOCK = 4096


@triton.jit
def _logaddexp(a, b):
    m = tl.maximum(a, b)
    return m + tl.log(1.0 + tl.exp(-tl.abs(a - b)))


@triton.jit
def _load_block(zr, tr, off, V, inv_tau, lse_x, lse_y, BLOCK: tl.constexpr):
    """One vocabulary block of a row: (cols, in-range mask, logits z, teacher logits, lq, lp, p, q)."""
    cols = off + tl.arange(0, BLOCK)
    m = cols < V
    z = tl.load(zr + cols, mask=m, other=0.0)
    traw = tl.load(tr + cols, mask=m, other=0.0)
    lq = z * inv_tau - lse_x
    lp = traw * inv_tau - lse_y
    p = tl.where(m, tl.exp(lp), 0.0)
    q = tl.where(m, tl.exp(lq), 0.0)
    return cols, m, z, traw, lq, lp, p, q


@triton.jit
def _g_and_terms(lp, lq, p, q, wh, wt, keep, pc, lqc, c1, c2, w1, LOSS: tl.constexpr):
    """(G, loss terms) of a block for the losses without row-level coupling (and AKL/clip given
    their row scalars). c1, c2: log-weights of the mixture; w1: 1 - beta or 1 - alpha."""
    zero = tl.zeros_like(q)
    if LOSS == 0:
        G = -p
        L = tl.where(p > 0, p * (lp - lq), zero)
    elif LOSS == 1:
        L = tl.where(q > 0, q * (lq - lp), zero)
        G = L
    elif LOSS == 2:
        lm = _logaddexp(lp + c1, lq + c2)
        tq = tl.where(q > 0, q * (lq - lm), zero)
        L = (1.0 - w1) * tl.where(p > 0, p * (lp - lm), zero) + w1 * tq
        G = w1 * tq
    elif LOSS == 3:
        d = q - p
        L = 0.5 * tl.abs(d)
        G = 0.5 * q * tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    elif LOSS == 4:
        lm = _logaddexp(lp + c1, lq + c2)
        L = tl.where(p > 0, p * (lp - lm), zero)
        G = tl.where(p > 0, -w1 * tl.exp(lp + lq - lm), zero)
    elif LOSS == 5:
        lm = _logaddexp(lp + c1, lq + c2)
        L = tl.where(q > 0, q * (lq - lm), zero)
        G = tl.where(q > 0, q * (lq - lm) - (1.0 - w1) * tl.exp(2.0 * lq - lm), zero)
    elif LOSS == 6:
        Lf = tl.where(p > 0, p * (lp - lq), zero)
        Lr = tl.where(q > 0, q * (lq - lp), zero)
        L = wh * Lf + wt * Lr
        G = -wh * p + wt * Lr
    else:
        L = tl.where(keep & (p > 0), p * (lp - lq), zero)
        G = tl.where(keep, -p, tl.where(pc > 0, -pc * tl.exp(lq - lqc), zero))
    return G, L


@triton.jit
def _kd_rows_kernel(
    Z, stride_z, Tl, stride_t, VALID, LABELS, THR, ROW_LOSS, V,
    inv_tau, c_kd, l_kd, w, c1, c2, w1,
    LOSS: tl.constexpr, HAS_CE: tl.constexpr, BLOCK: tl.constexpr, ROW0,
):
    r = tl.program_id(0)
    zr = Z + r.to(tl.int64) * stride_z
    tr = Tl + r.to(tl.int64) * stride_t
    n = ROW0 + r
    ok = tl.load(VALID + n)
    if ok == 0:
        for off in range(0, V, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            tl.store(zr + cols, tl.zeros([BLOCK], dtype=tl.float32), mask=cols < V)
        tl.store(ROW_LOSS + n, 0.0)
        return
    # pass 1: online log-sum-exp of x = z / tau, y = t / tau and (CE) z
    mx = float("-inf")
    sx = 0.0
    my = float("-inf")
    sy = 0.0
    mz = float("-inf")
    sz = 0.0
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        m = cols < V
        z = tl.load(zr + cols, mask=m, other=float("-inf"))
        y = tl.load(tr + cols, mask=m, other=float("-inf")) * inv_tau
        x = z * inv_tau
        nmx = tl.maximum(mx, tl.max(x, 0))
        sx = sx * tl.exp(mx - nmx) + tl.sum(tl.exp(x - nmx), 0)
        mx = nmx
        nmy = tl.maximum(my, tl.max(y, 0))
        sy = sy * tl.exp(my - nmy) + tl.sum(tl.where(m, tl.exp(y - nmy), 0.0), 0)
        my = nmy
        if HAS_CE:
            nmz = tl.maximum(mz, tl.max(z, 0))
            sz = sz * tl.exp(mz - nmz) + tl.sum(tl.exp(z - nmz), 0)
            mz = nmz
    lse_x = mx + tl.log(sx)
    lse_y = my + tl.log(sy)
    lse_z = mz + tl.log(sz)
    thr = tl.load(THR + n)
    # pass 2: row sums
    wh = 0.0
    wt = 0.0
    pc = 0.0
    lqc = 0.0
    if LOSS == 6:
        gh = 0.0
        gt = 0.0
        Lf = 0.0
        Lr = 0.0
        Sp = 0.0
        Sr = 0.0
        for off in range(0, V, BLOCK):
            cols, m, z, traw, lq, lp, p, q = _load_block(zr, tr, off, V, inv_tau, lse_x, lse_y, BLOCK)
            gap = tl.abs(p - q)
            head = m & (traw >= thr)
            gh += tl.sum(tl.where(head, gap, 0.0), 0)
            gt += tl.sum(tl.where(head, 0.0, gap), 0)
            Lf += tl.sum(tl.where(p > 0, p * (lp - lq), 0.0), 0)
            rr = tl.where(q > 0, q * (lq - lp), 0.0)
            Lr += tl.sum(rr, 0)
            Sp += tl.sum(p, 0)
            Sr += tl.sum(rr, 0)
        den = tl.maximum(gh + gt, 1.1754943508222875e-38)
        wh = gh / den
        wt = gt / den
        L = wh * Lf + wt * Lr
        S = -wh * Sp + wt * Sr
    elif LOSS == 7:
        Lk = 0.0
        Sk = 0.0
        mc = float("-inf")
        sc = 0.0
        for off in range(0, V, BLOCK):
            cols, m, z, traw, lq, lp, p, q = _load_block(zr, tr, off, V, inv_tau, lse_x, lse_y, BLOCK)
            keep = m & (traw >= thr)
            clip = m & (traw < thr)
            Lk += tl.sum(tl.where(keep & (p > 0), p * (lp - lq), 0.0), 0)
            Sk += tl.sum(tl.where(keep, p, 0.0), 0)
            pc += tl.sum(tl.where(clip, p, 0.0), 0)
            lqm = tl.where(clip, lq, float("-inf"))
            nmc = tl.maximum(mc, tl.max(lqm, 0))
            safe = tl.where(nmc == float("-inf"), 0.0, nmc)
            sc = sc * tl.exp(mc - safe) + tl.sum(tl.where(clip, tl.exp(lqm - safe), 0.0), 0)
            mc = nmc
        lqc = tl.where(sc > 0, mc + tl.log(tl.maximum(sc, 1e-38)), float("-inf"))
        L = Lk + tl.where(pc > 0, pc * (tl.log(tl.maximum(pc, 1e-38)) - lqc), 0.0)
        S = -Sk - pc
    else:
        L = 0.0
        S = 0.0
        for off in range(0, V, BLOCK):
            cols, m, z, traw, lq, lp, p, q = _load_block(zr, tr, off, V, inv_tau, lse_x, lse_y, BLOCK)
            G, Lb = _g_and_terms(lp, lq, p, q, wh, wt, m, pc, lqc, c1, c2, w1, LOSS)
            L += tl.sum(tl.where(m, Lb, 0.0), 0)
            S += tl.sum(tl.where(m, G, 0.0), 0)
    row_loss = l_kd * L
    if HAS_CE:
        label = tl.load(LABELS + n)
        zl = tl.load(zr + label)
        row_loss += w * (lse_z - zl)
    tl.store(ROW_LOSS + n, row_loss)
    # pass 3: dL/dz over the logits
    for off in range(0, V, BLOCK):
        cols, m, z, traw, lq, lp, p, q = _load_block(zr, tr, off, V, inv_tau, lse_x, lse_y, BLOCK)
        G, Lb = _g_and_terms(lp, lq, p, q, wh, wt, traw >= thr, pc, lqc, c1, c2, w1, LOSS)
        g = c_kd * (G - q * S)
        if HAS_CE:
            g += w * (tl.exp(z - lse_z) - tl.where(cols == label, 1.0, 0.0))
        tl.store(zr + cols, g, mask=m)


def forward(hidden, weight, bias, valid, teacher_logits, labels, loss, temperature, beta, alpha, ce_weight,
            chunk_size, thr):
    """Host launcher (dense teacher): ``(loss_sum, grad_hidden, grad_weight, grad_bias)``.

    ``loss`` is the effective loss name (``kd_math.effective_loss``); ``thr`` (N,) the per-row
    head/tail threshold on the teacher logits for ``akl`` / ``clipped_kl`` (ignored otherwise)."""
    import math

    N, H = hidden.shape
    V = weight.shape[0]
    C = int(chunk_size)
    code = CODES[loss]
    if code in (4, 5) and alpha >= 1.0:
        c1, c2, w1 = 0.0, 0.0, 0.0
    elif code == 2:
        c1, c2, w1 = math.log(beta), math.log1p(-beta), 1.0 - beta
    elif code == 4:
        c1, c2, w1 = math.log(alpha), math.log1p(-alpha), 1.0 - alpha
    elif code == 5:
        c1, c2, w1 = math.log1p(-alpha), math.log(alpha), 1.0 - alpha
    else:
        c1, c2, w1 = 0.0, 0.0, 1.0
    w = float(ce_weight)
    kd_on = w < 1.0 and not (code in (4, 5) and alpha >= 1.0)
    c_kd = (1.0 - w) * temperature if kd_on else 0.0
    l_kd = (1.0 - w) * temperature * temperature if kd_on else 0.0
    BLOCK, num_warps = calculate_settings(V, max_block=MAX_BLOCK)
    W32 = weight.float()
    b32 = bias.float() if bias is not None else None
    t32 = teacher_logits.float()
    lab = labels if labels is not None else torch.zeros(N, dtype=torch.long, device=hidden.device)
    thr = thr.float().contiguous() if thr is not None else torch.zeros(N, device=hidden.device)
    valid_i = valid.to(torch.int32).contiguous()
    grad_h = torch.empty_like(hidden)
    grad_w = torch.zeros(V, H, dtype=torch.float32, device=hidden.device)
    grad_b = torch.zeros(V, dtype=torch.float32, device=hidden.device)
    row_loss = torch.zeros(N, dtype=torch.float32, device=hidden.device)
    for s in range(0, N, C):
        e = min(N, s + C)
        h = hidden[s:e].float()
        z = h @ W32.t()
        if b32 is not None:
            z += b32
        t = t32[s:e].contiguous()
        _kd_rows_kernel[(e - s,)](
            z, z.stride(0), t, t.stride(0), valid_i, lab, thr, row_loss, V,
            1.0 / temperature, c_kd, l_kd, w, c1, c2, w1,
            LOSS=code, HAS_CE=w > 0, BLOCK=BLOCK, ROW0=s, num_warps=num_warps,
        )
        grad_h[s:e] = (z @ W32).to(hidden.dtype)
        grad_w.addmm_(z.t(), h)
        grad_b += z.sum(0)
    total = row_loss.double().sum().to(hidden.dtype)
    return total, grad_h, grad_w.to(weight.dtype), grad_b.to(weight.dtype)
