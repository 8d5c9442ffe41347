// C++ CPU kernel of edgekd::fused_linear_kd: output projection + token-level KD loss (and optional
// CE) with the gradients for the hidden states, the projection and its bias, WITHOUT the (N, V)
// student logits. The schema and the maths are in Python (edgekd/ops/fused_linear_kd.py,
// edgekd/ops/kd_math.py).
//
// Rows are processed in chunks of C rows. Per chunk: one GEMM gives the chunk's (C, V) logits
// (at::addmm, multi-threaded BLAS); one task per row (at::parallel_for over the rows of the chunk)
// computes the log-sum-exp, the divergence over the row's buckets (V tokens for a dense teacher;
// the k cached tokens plus the tail for a sparse one), the row's loss and overwrites the logits
// with dL/dz; two GEMMs add the chunk's share to grad_hidden (dZ W) and grad_weight (dZ^T H).
// The chunks run one after another: a task per chunk would need one (V, H) grad_weight accumulator
// per thread; the GEMMs and the row pass are the parallel parts. Extra memory: C x V + scratch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#define EDGEKD_ISA_KERNELS "fused_linear_kd_kernels.h"
#include "isa_clones.h"

namespace {

using at::Tensor;

int parse_loss(c10::string_view name, double beta, double alpha) {
  const std::string s(name.data(), name.size());
  if (s == "forward_kl") return 0;
  if (s == "reverse_kl") return 1;
  if (s == "jsd") return beta == 0.0 ? 0 : (beta == 1.0 ? 1 : 2);
  if (s == "tv") return 3;
  if (s == "skew_forward_kl") return alpha == 0.0 ? 0 : 4;
  if (s == "skew_reverse_kl") return alpha == 0.0 ? 1 : 5;
  if (s == "akl") return 6;
  if (s == "clipped_kl") return 7;
  TORCH_CHECK(false, "fused_linear_kd: unknown loss '", s, "'");
  return -1;
}

template <typename T>
struct Isa {
  decltype(&isa_base::row_lse<T>) row_lse;
  decltype(&isa_base::row_logprobs<T>) row_logprobs;
  decltype(&isa_base::bucket_row<T>) bucket_row;
  decltype(&isa_base::dense_grad_row<T>) dense_grad_row;
  decltype(&isa_base::sparse_grad_row<T>) sparse_grad_row;
  decltype(&isa_base::fkl_dense_row<T>) fkl_dense_row;
  decltype(&isa_base::sparse_prep_row<T>) sparse_prep_row;
  decltype(&isa_base::sparse_write_row<T>) sparse_write_row;
};

template <typename T>
Isa<T> pick_isa() {
#ifdef EDGEKD_HAVE_AVX2_CLONE
  if (edgekd_use_avx2())
    return {&isa_avx2::row_lse<T>, &isa_avx2::row_logprobs<T>, &isa_avx2::bucket_row<T>,
            &isa_avx2::dense_grad_row<T>, &isa_avx2::sparse_grad_row<T>,
            &isa_avx2::fkl_dense_row<T>, &isa_avx2::sparse_prep_row<T>, &isa_avx2::sparse_write_row<T>};
#endif
  return {&isa_base::row_lse<T>, &isa_base::row_logprobs<T>, &isa_base::bucket_row<T>,
          &isa_base::dense_grad_row<T>, &isa_base::sparse_grad_row<T>,
          &isa_base::fkl_dense_row<T>, &isa_base::sparse_prep_row<T>, &isa_base::sparse_write_row<T>};
}

struct Settings {
  int kind;
  double tau, beta, alpha, w;
};

// One chunk's row pass: z (rows, V) logits in, dL/dz out; loss of each row into row_loss.
template <typename T>
void chunk_rows(const Isa<T>& isa, T* z, int64_t rows, int64_t V, int64_t row0, const bool* valid, const T* teacher,
                const int64_t* ids, const T* lps, const T* tail, int64_t k, const int64_t* labels, const Settings& st,
                double* row_loss) {
  const bool dense = teacher != nullptr;
  const bool has_tail = !dense && k < V;
  const int64_t K = dense ? V : k + (has_tail ? 1 : 0);
  const T inv_t = (T)(1.0 / st.tau);
  const T c_kd = (T)((1.0 - st.w) * st.tau);
  const double l_kd = (1.0 - st.w) * st.tau * st.tau;
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<T> lq(dense ? V : K), lp(dense ? V : K), G(K), sortbuf(K), ztop(dense ? 0 : k);
    std::vector<char> in_top(dense ? 0 : V, 0);
    std::vector<T> ex(dense ? 0 : V);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = row0 + r;
      T* zr = z + r * V;
      if (!valid[n]) {
        std::fill(zr, zr + V, T(0));
        row_loss[n] = 0.0;
        continue;
      }
      if (dense && st.kind == 0 && st.w < 1.0 && (st.w == 0.0 || st.tau == 1.0)) {
        // forward KL fast path (CE folded in when tau = 1: softmax(z) is q)
        const int64_t label = st.w > 0 ? labels[n] : 0;
        const double zl = st.w > 0 ? (double)zr[label] : 0.0;
        double lse_x;
        const double L = isa.fkl_dense_row(zr, teacher + n * V, V, inv_t, c_kd, (T)st.w, lq.data(), lp.data(), &lse_x);
        double loss = l_kd * L;
        if (st.w > 0) {
          loss += st.w * (lse_x - zl);
          zr[label] -= (T)st.w;
        }
        row_loss[n] = loss;
        continue;
      }
      double loss = 0.0;
      T lse1 = 0;
      int64_t label = -1;
      if (st.w > 0) {
        label = labels[n];
        T m1;
        double l1;
        isa.row_lse(zr, V, T(1), &m1, &l1);
        lse1 = (T)l1;
        loss += st.w * (l1 - (double)zr[label]);
      }
      if (dense) {
        T m;
        double lse_d;
        isa.row_lse(zr, V, inv_t, &m, &lse_d);
        const T lse = (T)lse_d;
        const T* tr = teacher + n * V;
        T mt;
        double lset;
        isa.row_lse(tr, V, inv_t, &mt, &lset);
        isa.row_logprobs(tr, V, inv_t, (T)lset, lp.data());
        isa.row_logprobs(zr, V, inv_t, lse, lq.data());
        if (st.w < 1.0) {
          loss += l_kd * isa.bucket_row(lp.data(), lq.data(), V, st.kind, st.beta, st.alpha, G.data(), sortbuf.data());
        } else {
          std::fill(G.begin(), G.end(), T(0));
        }
        double S = 0.0;
        for (int64_t j = 0; j < V; ++j) S += (double)G[j];
        isa.dense_grad_row(zr, lq.data(), G.data(), V, st.w < 1.0 ? c_kd : T(0), (T)S, (T)st.w, lse1);
      } else {
        // sparse teacher: one exp per vocabulary entry, kept in `ex`
        const int64_t* idr = ids + n * k;
        for (int64_t b = 0; b < k; ++b) in_top[idr[b]] = 1;
        double lse_s, lse_tail;
        T inv_s;
        isa.sparse_prep_row(zr, in_top.data(), V, inv_t, ex.data(), &lse_s, &lse_tail, &inv_s);
        for (int64_t b = 0; b < k; ++b) in_top[idr[b]] = 0;
        for (int64_t b = 0; b < k; ++b) {
          ztop[b] = zr[idr[b]];
          lq[b] = (T)((double)ztop[b] * (double)inv_t - lse_s);
          lp[b] = lps[n * k + b];
        }
        const T lq_tail = (T)(lse_tail - lse_s);
        if (has_tail) {
          lq[k] = lq_tail;
          lp[k] = tail[n];
        }
        if (st.w < 1.0) {
          loss += l_kd * isa.bucket_row(lp.data(), lq.data(), K, st.kind, st.beta, st.alpha, G.data(), sortbuf.data());
        } else {
          std::fill(G.begin(), G.end(), T(0));
        }
        double S = 0.0;
        for (int64_t b = 0; b < K; ++b) S += (double)G[b];
        const T ckd = st.w < 1.0 ? c_kd : T(0);
        const double g_tail = has_tail ? (double)G[k] : 0.0;
        const T tail_coef = g_tail != 0.0 ? (T)(g_tail / std::exp(lse_tail - lse_s)) : T(0);
        const bool ce_is_q = st.w > 0 && st.tau == 1.0;
        if (st.w > 0 && !ce_is_q) {  // CE at tau != 1: softmax(z) needs z, read before the write
          isa.sparse_grad_row(zr, V, inv_t, (T)lse_s, lq_tail, has_tail ? G[k] : T(0), ckd, (T)S, (T)st.w, lse1);
        } else {
          isa.sparse_write_row(zr, ex.data(), V, inv_s, tail_coef, ckd, (T)S, ce_is_q ? (T)st.w : T(0));
        }
        for (int64_t b = 0; b < k; ++b) {
          const T ce = st.w > 0 ? (T)st.w * (T)std::exp((double)ztop[b] - (double)lse1) : T(0);
          zr[idr[b]] = ckd * (G[b] - (T)std::exp((double)lq[b]) * (T)S) + ce;
        }
      }
      if (st.w > 0) zr[label] -= (T)st.w;
      row_loss[n] = loss;
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_linear_kd_cpu(
    const Tensor& hidden, const Tensor& weight, const c10::optional<Tensor>& bias, const Tensor& valid,
    const c10::optional<Tensor>& teacher_logits, const c10::optional<Tensor>& topk_ids,
    const c10::optional<Tensor>& topk_logprobs, const c10::optional<Tensor>& tail_logmass,
    const c10::optional<Tensor>& labels, c10::string_view loss, double temperature, double beta, double alpha,
    double ce_weight, int64_t chunk_size) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2, "fused_linear_kd: hidden (N, H) and weight (V, H) expected");
  TORCH_CHECK(hidden.scalar_type() == at::kFloat || hidden.scalar_type() == at::kDouble,
              "fused_linear_kd (CPU): hidden must be float32 or float64, got ", hidden.scalar_type());
  TORCH_CHECK(weight.scalar_type() == hidden.scalar_type(), "fused_linear_kd: weight must have the dtype of hidden");
  const int64_t N = hidden.size(0), H = hidden.size(1), V = weight.size(0);
  TORCH_CHECK(weight.size(1) == H, "fused_linear_kd: weight is ", weight.sizes(), " but hidden has H = ", H);
  TORCH_CHECK(valid.scalar_type() == at::kBool && valid.dim() == 1 && valid.size(0) == N,
              "fused_linear_kd: valid must be a bool (N,) tensor");
  TORCH_CHECK(temperature > 0, "fused_linear_kd: temperature must be > 0");
  TORCH_CHECK(ce_weight >= 0 && ce_weight <= 1, "fused_linear_kd: ce_weight must be in [0, 1]");
  const bool dense = teacher_logits.has_value();
  TORCH_CHECK(dense != (topk_ids.has_value() && topk_logprobs.has_value() && tail_logmass.has_value()),
              "fused_linear_kd: give either teacher_logits or (topk_ids, topk_logprobs, tail_logmass)");
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == V && bias->scalar_type() == hidden.scalar_type(),
                "fused_linear_kd: bias must be (V,) of the dtype of hidden");
  int64_t k = 0;
  Tensor t, ids, lps, tail;
  if (dense) {
    t = teacher_logits->contiguous();
    TORCH_CHECK(t.dim() == 2 && t.size(0) == N && t.size(1) == V && t.scalar_type() == hidden.scalar_type(),
                "fused_linear_kd: teacher_logits must be (N, V) = (", N, ", ", V, ") of the dtype of hidden");
  } else {
    ids = topk_ids->contiguous();
    lps = topk_logprobs->contiguous();
    tail = tail_logmass->contiguous();
    TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 2 && ids.size(0) == N,
                "fused_linear_kd: topk_ids must be int64 (N, k)");
    k = ids.size(1);
    TORCH_CHECK(k >= 1 && k <= V, "fused_linear_kd: k = ", k, " must be in [1, V = ", V, "]");
    TORCH_CHECK(lps.sizes() == ids.sizes() && lps.scalar_type() == hidden.scalar_type(),
                "fused_linear_kd: topk_logprobs must be (N, k) of the dtype of hidden");
    TORCH_CHECK(tail.dim() == 1 && tail.size(0) == N && tail.scalar_type() == hidden.scalar_type(),
                "fused_linear_kd: tail_logmass must be (N,) of the dtype of hidden");
    TORCH_CHECK(ids.numel() == 0 || (ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < V),
                "fused_linear_kd: topk_ids out of [0, V)");
  }
  Tensor lab;
  if (ce_weight > 0) {
    TORCH_CHECK(labels.has_value(), "fused_linear_kd: ce_weight > 0 needs labels");
    lab = labels->contiguous();
    TORCH_CHECK(lab.scalar_type() == at::kLong && lab.dim() == 1 && lab.size(0) == N,
                "fused_linear_kd: labels must be int64 (N,)");
    const Tensor lv = lab.masked_select(valid);
    TORCH_CHECK(lv.numel() == 0 || (lv.min().item<int64_t>() >= 0 && lv.max().item<int64_t>() < V),
                "fused_linear_kd: labels of valid rows must be in [0, V)");
  }
  const Settings st{parse_loss(loss, beta, alpha), temperature, beta, alpha, ce_weight};
  const int64_t C = std::max<int64_t>(1, std::min<int64_t>(N, chunk_size > 0 ? chunk_size : 256));
  const Tensor h = hidden.contiguous(), W = weight.contiguous(), vmask = valid.contiguous();
  Tensor grad_h = at::empty_like(h);
  Tensor grad_w = at::zeros_like(W);
  Tensor grad_b = at::zeros({V}, h.options());
  Tensor row_loss = at::zeros({N}, h.options().dtype(at::kDouble));
  Tensor zbuf = at::empty({C, V}, h.options());
  const Tensor Wt = W.t();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "fused_linear_kd_cpu", [&] {
    using T = scalar_t;
    const Isa<T> isa = pick_isa<T>();
    for (int64_t s = 0; s < N; s += C) {
      const int64_t rows = std::min(C, N - s);
      Tensor z = zbuf.narrow(0, 0, rows);
      const Tensor hc = h.narrow(0, s, rows);
      if (bias.has_value()) at::addmm_out(z, *bias, hc, Wt);
      else at::mm_out(z, hc, Wt);
      chunk_rows<T>(isa, z.data_ptr<T>(), rows, V, s, vmask.data_ptr<bool>(), dense ? t.data_ptr<T>() : nullptr,
                    dense ? nullptr : ids.data_ptr<int64_t>(), dense ? nullptr : lps.data_ptr<T>(),
                    dense ? nullptr : tail.data_ptr<T>(), k, ce_weight > 0 ? lab.data_ptr<int64_t>() : nullptr, st,
                    row_loss.data_ptr<double>());
      Tensor gh = grad_h.narrow(0, s, rows);
      at::mm_out(gh, z, W);
      grad_w.addmm_(z.t(), hc);
      grad_b.add_(z.sum(0));
    }
  });
  Tensor total = row_loss.sum().to(h.scalar_type());
  return {total, grad_h, grad_w, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(edgekd, CPU, m) { m.impl("fused_linear_kd", &fused_linear_kd_cpu); }
