// Per-row loss and logit-gradient loops of the fused_linear_kd CPU kernel (fused_linear_kd.cpp).
//
// Deliberately without an include guard: fused_linear_kd.cpp includes it twice through
// isa_clones.h (namespace isa_avx2 under `#pragma GCC target("avx2,fma")`, namespace isa_base for
// any CPU) and picks one at run time. The formulas are those of edgekd/ops/kd_math.py (the
// reference): bucket distributions p (teacher) and Q (student) as log-probs lp, lq; G = Q dL/dQ;
// the logit gradient is G - Q sum G (a token j of a multi-token bucket b: (q_j / Q_b) G_b - q_j S).

#include "vec_math.h"  // exp_approx

// exp with exp(x) = 0 below the float range (exp_approx alone clamps at exp(-87)).
inline float exp_t(float x) {
  const float e = exp_approx(x);
  return x < -87.0f ? 0.0f : e;
}
inline double exp_t(double x) { return std::exp(x); }

inline double logaddexp_d(double a, double b) {
  const double m = a > b ? a : b;
  if (m == -std::numeric_limits<double>::infinity()) return m;
  return m + std::log1p(std::exp(-std::fabs(a - b)));
}

// max_j x[j] and log sum_j exp(x[j] - max) of a row.
template <typename T>
void row_lse(const T* __restrict x, int64_t n, T scale, T* out_max, double* out_lse) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < n; ++j) m = x[j] * scale > m ? x[j] * scale : m;
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    s0 += exp_t(x[j] * scale - m);
    s1 += exp_t(x[j + 1] * scale - m);
    s2 += exp_t(x[j + 2] * scale - m);
    s3 += exp_t(x[j + 3] * scale - m);
  }
  for (; j < n; ++j) s0 += exp_t(x[j] * scale - m);
  *out_max = m;
  *out_lse = (double)m + std::log((double)s0 + (double)s1 + (double)s2 + (double)s3);
}

// y[j] = x[j] * scale - lse (log-probs of a row)
template <typename T>
void row_logprobs(const T* __restrict x, int64_t n, T scale, T lse, T* __restrict y) {
  for (int64_t j = 0; j < n; ++j) y[j] = x[j] * scale - lse;
}

// Per-row threshold of the head/tail split (kd_math.split_threshold); sortbuf holds K entries.
template <typename T>
double split_threshold(const T* lp, int64_t K, double mass, bool exclusive, T* sortbuf) {
  for (int64_t b = 0; b < K; ++b) sortbuf[b] = exp_t(lp[b]);
  std::sort(sortbuf, sortbuf + K, [](T a, T b) { return a > b; });
  double c = 0.0, thr = std::numeric_limits<double>::infinity();
  for (int64_t b = 0; b < K; ++b) {
    const double prev = c;
    c += (double)sortbuf[b];
    const bool cond = exclusive ? (prev < mass) : (c <= mass);
    if (!cond) break;
    thr = (double)sortbuf[b];
  }
  return thr;
}

enum LossKind { kFKL = 0, kRKL, kJSD, kTV, kSFKL, kSRKL, kAKL, kCLIP };

// Divergence of one row (returned, double) and G[b] = Q_b dL/dQ_b over the K buckets.
template <typename T>
double bucket_row(const T* __restrict lp, const T* __restrict lq, int64_t K, int kind, double beta, double alpha,
                  T* __restrict G, T* __restrict sortbuf) {
  double L = 0.0;
  switch (kind) {
    case kFKL:
      for (int64_t b = 0; b < K; ++b) {
        const T p = exp_t(lp[b]);
        L += p > 0 ? (double)(p * (lp[b] - lq[b])) : 0.0;
        G[b] = -p;
      }
      return L;
    case kRKL:
      for (int64_t b = 0; b < K; ++b) {
        const T q = exp_t(lq[b]);
        const T t = q > 0 ? q * (lq[b] - lp[b]) : T(0);
        L += (double)t;
        G[b] = t;
      }
      return L;
    case kJSD: {
      const double lb = std::log(beta), l1b = std::log1p(-beta);
      double Lp = 0.0, Lq = 0.0;
      for (int64_t b = 0; b < K; ++b) {
        const double lm = logaddexp_d((double)lp[b] + lb, (double)lq[b] + l1b);
        const double p = std::exp((double)lp[b]), q = std::exp((double)lq[b]);
        if (p > 0) Lp += p * ((double)lp[b] - lm);
        const double tq = q > 0 ? q * ((double)lq[b] - lm) : 0.0;
        Lq += tq;
        G[b] = (T)((1.0 - beta) * tq);
      }
      return beta * Lp + (1.0 - beta) * Lq;
    }
    case kTV:
      for (int64_t b = 0; b < K; ++b) {
        const T p = exp_t(lp[b]), q = exp_t(lq[b]);
        const T d = q - p;
        L += 0.5 * std::fabs((double)d);
        G[b] = T(0.5) * q * (d > 0 ? T(1) : (d < 0 ? T(-1) : T(0)));
      }
      return L;
    case kSFKL: {
      if (alpha >= 1.0) {
        for (int64_t b = 0; b < K; ++b) G[b] = 0;
        return 0.0;
      }
      const double la = std::log(alpha), l1a = std::log1p(-alpha);
      for (int64_t b = 0; b < K; ++b) {
        const double lm = logaddexp_d((double)lp[b] + la, (double)lq[b] + l1a);
        const double p = std::exp((double)lp[b]);
        if (p > 0) {
          L += p * ((double)lp[b] - lm);
          G[b] = (T)(-(1.0 - alpha) * std::exp((double)lp[b] + (double)lq[b] - lm));
        } else {
          G[b] = 0;
        }
      }
      return L;
    }
    case kSRKL: {
      if (alpha >= 1.0) {
        for (int64_t b = 0; b < K; ++b) G[b] = 0;
        return 0.0;
      }
      const double la = std::log(alpha), l1a = std::log1p(-alpha);
      for (int64_t b = 0; b < K; ++b) {
        const double lm = logaddexp_d((double)lp[b] + l1a, (double)lq[b] + la);
        const double q = std::exp((double)lq[b]);
        if (q > 0) {
          L += q * ((double)lq[b] - lm);
          G[b] = (T)(q * ((double)lq[b] - lm) - alpha * std::exp(2.0 * (double)lq[b] - lm));
        } else {
          G[b] = 0;
        }
      }
      return L;
    }
    case kAKL: {
      const double thr = split_threshold(lp, K, 0.5, false, sortbuf);
      double gh = 0.0, gt = 0.0, Lf = 0.0, Lr = 0.0;
      for (int64_t b = 0; b < K; ++b) {
        const T p = exp_t(lp[b]), q = exp_t(lq[b]);
        const double gap = std::fabs((double)p - (double)q);
        if ((double)p >= thr) gh += gap; else gt += gap;
        if (p > 0) Lf += (double)(p * (lp[b] - lq[b]));
        if (q > 0) Lr += (double)(q * (lq[b] - lp[b]));
      }
      const double den = std::max(gh + gt, (double)std::numeric_limits<T>::min());
      const double wh = gh / den, wt = gt / den;
      for (int64_t b = 0; b < K; ++b) {
        const T p = exp_t(lp[b]), q = exp_t(lq[b]);
        const T r = q > 0 ? q * (lq[b] - lp[b]) : T(0);
        G[b] = (T)(-wh * (double)p + wt * (double)r);
      }
      return wh * Lf + wt * Lr;
    }
    case kCLIP: {
      const double thr = split_threshold(lp, K, 1.0 - alpha, true, sortbuf);
      double pc = 0.0, mq = -std::numeric_limits<double>::infinity();
      bool any_clip = false;
      for (int64_t b = 0; b < K; ++b) {
        const T p = exp_t(lp[b]);
        if ((double)p < thr) {
          any_clip = true;
          pc += (double)p;
          mq = std::max(mq, (double)lq[b]);
        } else if (p > 0) {
          L += (double)(p * (lp[b] - lq[b]));
        }
      }
      double lqc = -std::numeric_limits<double>::infinity();
      if (any_clip && mq > -std::numeric_limits<double>::infinity()) {
        double s = 0.0;
        for (int64_t b = 0; b < K; ++b)
          if ((double)exp_t(lp[b]) < thr) s += std::exp((double)lq[b] - mq);
        lqc = mq + std::log(s);
      }
      if (any_clip && pc > 0) L += pc * (std::log(pc) - lqc);
      for (int64_t b = 0; b < K; ++b) {
        const T p = exp_t(lp[b]);
        if ((double)p >= thr) G[b] = -p;
        else G[b] = pc > 0 ? (T)(-pc * std::exp((double)lq[b] - lqc)) : T(0);
      }
      return L;
    }
    default:
      return 0.0;
  }
}

// Dense write-back: z[j] <- c_kd (G[j] - q_j S) + w (softmax(z)_j - [j == label]), q_j = exp(lq[j]);
// reads z[j] (the logit) before overwriting it. sm_shift = lse of z at temperature 1 (used iff w > 0).
template <typename T>
void dense_grad_row(T* __restrict z, const T* __restrict lq, const T* __restrict G, int64_t V, T c_kd, T S, T w,
                    T lse1) {
  if (w > 0) {
    for (int64_t j = 0; j < V; ++j) z[j] = c_kd * (G[j] - exp_t(lq[j]) * S) + w * exp_t(z[j] - lse1);
  } else {
    for (int64_t j = 0; j < V; ++j) z[j] = c_kd * (G[j] - exp_t(lq[j]) * S);
  }
}

// Sparse write-back for all tokens as tail tokens: z[j] <- c_kd (exp(x_j - lse - lq_tail) G_tail - q_j S)
// + w softmax(z)_j with x_j = z[j] * inv_t; the top-k entries are fixed up by the caller.
template <typename T>
void sparse_grad_row(T* __restrict z, int64_t V, T inv_t, T lse, T lq_tail, T G_tail, T c_kd, T S, T w, T lse1) {
  for (int64_t j = 0; j < V; ++j) {
    const T lqj = z[j] * inv_t - lse;
    const T tail = G_tail != 0 ? exp_t(lqj - lq_tail) * G_tail : T(0);
    const T ce = w > 0 ? w * exp_t(z[j] - lse1) : T(0);
    z[j] = c_kd * (tail - exp_t(lqj) * S) + ce;
  }
}

// Forward KL with a dense teacher, the common case, in 4 passes and 2 exps per entry (the generic
// path takes 4 exps): ex, ey hold exp(x - max x), exp(y - max y). Overwrites z with
// c_kd (q S_p - p) + w (q - onehot) (the CE part only when tau = 1, where softmax(z) = q; the
// caller subtracts the one-hot) and returns the divergence. lse1_out: log-sum-exp of x.
template <typename T>
double fkl_dense_row(T* __restrict z, const T* __restrict t, int64_t V, T inv_t, T c_kd, T w, T* __restrict ex,
                     T* __restrict ey, double* lse_out) {
  T mx = -std::numeric_limits<T>::infinity(), my = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < V; ++j) {
    const T x = z[j] * inv_t, y = t[j] * inv_t;
    mx = x > mx ? x : mx;
    my = y > my ? y : my;
  }
  T sx0 = 0, sx1 = 0, sy0 = 0, sy1 = 0;
  int64_t j = 0;
  for (; j + 2 <= V; j += 2) {
    ex[j] = exp_t(z[j] * inv_t - mx);
    ex[j + 1] = exp_t(z[j + 1] * inv_t - mx);
    ey[j] = exp_t(t[j] * inv_t - my);
    ey[j + 1] = exp_t(t[j + 1] * inv_t - my);
    sx0 += ex[j];
    sx1 += ex[j + 1];
    sy0 += ey[j];
    sy1 += ey[j + 1];
  }
  for (; j < V; ++j) {
    ex[j] = exp_t(z[j] * inv_t - mx);
    ey[j] = exp_t(t[j] * inv_t - my);
    sx0 += ex[j];
    sy0 += ey[j];
  }
  const double sx = (double)sx0 + (double)sx1, sy = (double)sy0 + (double)sy1;
  const T cx = (T)((double)mx + std::log(sx)), cy = (T)((double)my + std::log(sy));
  const T isx = (T)(1.0 / sx), isy = (T)(1.0 / sy);
  T L0 = 0, L1 = 0, P0 = 0, P1 = 0;
  j = 0;
  for (; j + 2 <= V; j += 2) {
    const T p0 = ey[j] * isy, p1 = ey[j + 1] * isy;
    L0 += p0 > 0 ? p0 * ((t[j] * inv_t - cy) - (z[j] * inv_t - cx)) : T(0);
    L1 += p1 > 0 ? p1 * ((t[j + 1] * inv_t - cy) - (z[j + 1] * inv_t - cx)) : T(0);
    P0 += p0;
    P1 += p1;
  }
  for (; j < V; ++j) {
    const T p0 = ey[j] * isy;
    L0 += p0 > 0 ? p0 * ((t[j] * inv_t - cy) - (z[j] * inv_t - cx)) : T(0);
    P0 += p0;
  }
  const T Sp = P0 + P1;
  for (j = 0; j < V; ++j) {
    const T q = ex[j] * isx;
    z[j] = c_kd * (q * Sp - ey[j] * isy) + w * q;
  }
  *lse_out = (double)cx;
  return (double)L0 + (double)L1;
}

// Sparse teacher, one exp per entry: e[j] = exp(x_j - max x) with x = z * inv_t; returns the
// log-sum-exp of x (lse_out), of x over the entries with skip[j] == 0 (the tail; -inf if none) and
// 1 / sum e (inv_s_out).
template <typename T>
void sparse_prep_row(const T* __restrict z, const char* __restrict skip, int64_t V, T inv_t, T* __restrict e,
                     double* lse_out, double* lse_tail_out, T* inv_s_out) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < V; ++j) m = z[j] * inv_t > m ? z[j] * inv_t : m;
  T s0 = 0, s1 = 0, t0 = 0, t1 = 0;
  int64_t j = 0;
  for (; j + 2 <= V; j += 2) {
    e[j] = exp_t(z[j] * inv_t - m);
    e[j + 1] = exp_t(z[j + 1] * inv_t - m);
    s0 += e[j];
    s1 += e[j + 1];
    t0 += skip[j] ? T(0) : e[j];
    t1 += skip[j + 1] ? T(0) : e[j + 1];
  }
  for (; j < V; ++j) {
    e[j] = exp_t(z[j] * inv_t - m);
    s0 += e[j];
    t0 += skip[j] ? T(0) : e[j];
  }
  const double s = (double)s0 + (double)s1, st = (double)t0 + (double)t1;
  *lse_out = (double)m + std::log(s);
  *lse_tail_out = st > 0 ? (double)m + std::log(st) : -std::numeric_limits<double>::infinity();
  *inv_s_out = (T)(1.0 / s);
}

// Sparse write-back for all tokens as tail tokens: z[j] <- c_kd q_j (tail_coef - S) + w q_j with
// q_j = e[j] * inv_s (the CE term w softmax(z)_j = w q_j needs tau = 1; ce_q = 0 otherwise) and
// tail_coef = G_tail / Q_tail; the top-k entries are fixed up by the caller.
template <typename T>
void sparse_write_row(T* __restrict z, const T* __restrict e, int64_t V, T inv_s, T tail_coef, T c_kd, T S,
                      T ce_q) {
  const T a = c_kd * (tail_coef - S) + ce_q;
  for (int64_t j = 0; j < V; ++j) z[j] = a * (e[j] * inv_s);
}
