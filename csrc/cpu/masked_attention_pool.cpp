// C++ CPU kernels of edgekd::masked_attention_pool and edgekd::masked_attention_pool_backward.
//
//   u_t = tanh(W h_t)   e_t = v . u_t   alpha = masked softmax(e)   context = sum_t alpha_t h_t
//
// No work on padding: the N valid positions of the batch are compacted into an (N, D) matrix
// (a plain view when nothing is masked), and the projection W h for all of them is ONE GEMM
// (at::mm, multi-threaded BLAS). The per-row tanh, scoring, masked softmax and weighted sum run as
// one task per batch row (at::parallel_for).
// Backward: per row g_e and G = (g_e v + grad_u)(1 - u^2) on the compact rows, then three GEMMs
// (grad_states_c = G W, grad_W = G^T H_c, grad_v = U_c^T g_e) and a per-row pass that adds
// alpha * grad_context and scatters back to (B, T, D) with zeros at padding.
// The output u (B, T, A) holds tanh(W h) at valid positions and 0 at masked ones.
// The schemas are defined in Python (edgekd/ops/masked_attention_pool.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

void check_inputs(const Tensor& states, const Tensor& mask, const Tensor& W, const Tensor& v) {
  TORCH_CHECK(states.dim() == 3, "masked_attention_pool: states must be (B, T, D), got rank ", states.dim());
  TORCH_CHECK(mask.dim() == 2, "masked_attention_pool: mask must be (B, T), got rank ", mask.dim());
  TORCH_CHECK(W.dim() == 2, "masked_attention_pool: W must be (A, D), got rank ", W.dim());
  TORCH_CHECK(v.dim() == 1, "masked_attention_pool: v must be (A,), got rank ", v.dim());
  TORCH_CHECK(mask.scalar_type() == at::kBool, "masked_attention_pool: mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(states.scalar_type() == at::kFloat || states.scalar_type() == at::kDouble,
              "masked_attention_pool (CPU): states must be float32 or float64, got ", states.scalar_type());
  TORCH_CHECK(W.scalar_type() == states.scalar_type() && v.scalar_type() == states.scalar_type(),
              "masked_attention_pool: W and v must have the dtype of states");
  TORCH_CHECK(mask.size(0) == states.size(0) && mask.size(1) == states.size(1),
              "masked_attention_pool: mask shape ", mask.sizes(), " does not match states ", states.sizes());
  TORCH_CHECK(W.size(1) == states.size(2), "masked_attention_pool: W is ", W.sizes(), " but states have D = ",
              states.size(2));
  TORCH_CHECK(v.size(0) == W.size(0), "masked_attention_pool: v has ", v.size(0), " entries but W has ", W.size(0),
              " rows");
  TORCH_CHECK(states.device().is_cpu() && mask.device().is_cpu() && W.device().is_cpu() && v.device().is_cpu(),
              "masked_attention_pool (CPU kernel): all inputs must be CPU tensors");
}

// Row offsets of the compact layout: off[b] = number of valid positions in rows < b; off[B] = N.
std::vector<int64_t> row_offsets(const bool* M, int64_t B, int64_t T) {
  std::vector<int64_t> off(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    const bool* m = M + b * T;
    for (int64_t t = 0; t < T; ++t) n += m[t] ? 1 : 0;
    TORCH_CHECK(n > 0, "masked_attention_pool: row ", b, " of mask has no valid position");
    off[b + 1] = off[b] + n;
  }
  return off;
}

}  // namespace

// tanh (1 - 2 / (1 + exp(2x)) with a branch-free Cephes-style exp, absolute error ~1e-7) and dot
// products from vec_math.h, compiled for AVX2 + FMA and for the baseline ISA; the one the CPU
// supports is picked at run time. ATen's tanh is several times slower than its sigmoid on some
// CPUs (measured here: ~12 vs ~1 ns/element).
#define EDGEKD_ISA_KERNELS "vec_math.h"
#include "isa_clones.h"

namespace {

template <typename scalar_t>
inline void tanh_inplace(scalar_t* x, int64_t n) {
#ifdef EDGEKD_HAVE_AVX2_CLONE
  if (edgekd_use_avx2()) return isa_avx2::tanh_inplace<scalar_t>(x, n);
#endif
  isa_base::tanh_inplace<scalar_t>(x, n);
}

template <typename scalar_t>
inline scalar_t dot_n(const scalar_t* a, const scalar_t* b, int64_t n) {
#ifdef EDGEKD_HAVE_AVX2_CLONE
  if (edgekd_use_avx2()) return isa_avx2::dot_n<scalar_t>(a, b, n);
#endif
  return isa_base::dot_n<scalar_t>(a, b, n);
}

int64_t grain_for(int64_t per_row_work) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, per_row_work));
}

// Gather the valid rows of X (B*T, K) into a compact (N, K) tensor (a view when N == B*T).
template <typename scalar_t>
Tensor compact_rows(const Tensor& X, const bool* M, const std::vector<int64_t>& off, int64_t B, int64_t T, int64_t K) {
  const int64_t N = off[B];
  if (N == B * T) return X.view({N, K});
  Tensor out = at::empty({N, K}, X.options());
  const scalar_t* src = X.data_ptr<scalar_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  at::parallel_for(0, B, grain_for(T * K), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t k = off[b];
      for (int64_t t = 0; t < T; ++t) {
        if (!M[b * T + t]) continue;
        std::memcpy(dst + k * K, src + (b * T + t) * K, sizeof(scalar_t) * K);
        ++k;
      }
    }
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> masked_attention_pool_cpu(const Tensor& states_in, const Tensor& mask_in,
                                                                     const Tensor& W_in, const Tensor& v_in) {
  check_inputs(states_in, mask_in, W_in, v_in);
  const Tensor states = states_in.contiguous();
  const Tensor mask = mask_in.contiguous();
  const Tensor W = W_in.contiguous();
  const Tensor v = v_in.contiguous();
  const int64_t B = states.size(0), T = states.size(1), D = states.size(2), A = W.size(0);
  const bool* M = mask.data_ptr<bool>();
  const std::vector<int64_t> off = row_offsets(M, B, T);
  const int64_t N = off[B];
  const bool dense = N == B * T;

  Tensor context = at::empty({B, D}, states.options());
  Tensor logits = at::empty({B, T}, states.options());
  Tensor attention = at::empty({B, T}, states.options());
  Tensor u;

  AT_DISPATCH_FLOATING_TYPES(states.scalar_type(), "masked_attention_pool_cpu", [&] {
    const Tensor Hc = compact_rows<scalar_t>(states.view({B * T, D}), M, off, B, T, D);
    Tensor Uc = at::mm(Hc, W.t());  // (N, A): the projection of all valid positions, one GEMM
    u = dense ? Uc.view({B, T, A}) : at::empty({B, T, A}, states.options());
    const scalar_t* H = states.data_ptr<scalar_t>();
    scalar_t* UC = Uc.data_ptr<scalar_t>();
    scalar_t* UO = u.data_ptr<scalar_t>();
    const scalar_t* V = v.data_ptr<scalar_t>();
    scalar_t* C = context.data_ptr<scalar_t>();
    scalar_t* L = logits.data_ptr<scalar_t>();
    scalar_t* P = attention.data_ptr<scalar_t>();
    at::parallel_for(0, B, grain_for(T * (A + D)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const bool* m = M + b * T;
        scalar_t* l = L + b * T;
        scalar_t* p = P + b * T;
        scalar_t mx = -std::numeric_limits<scalar_t>::infinity();
        int64_t k = off[b];
        for (int64_t t = 0; t < T; ++t) {
          if (!m[t]) {
            l[t] = scalar_t(0);
            if (!dense) std::fill(UO + (b * T + t) * A, UO + (b * T + t + 1) * A, scalar_t(0));
            continue;
          }
          scalar_t* ut = UC + k * A;
          tanh_inplace(ut, A);  // u = tanh(W h), fused here rather than a separate pass
          if (!dense) std::memcpy(UO + (b * T + t) * A, ut, sizeof(scalar_t) * A);
          const scalar_t e = dot_n(ut, V, A);
          l[t] = e;
          mx = std::max(mx, e);
          ++k;
        }
        scalar_t sum = 0;
        for (int64_t t = 0; t < T; ++t) {
          if (m[t]) {
            const scalar_t ex = std::exp(l[t] - mx);
            p[t] = ex;
            sum += ex;
          } else {
            p[t] = scalar_t(0);
          }
        }
        const scalar_t inv = scalar_t(1) / sum;
        scalar_t* c = C + b * D;
        std::fill(c, c + D, scalar_t(0));
        for (int64_t t = 0; t < T; ++t) {
          if (!m[t]) continue;
          const scalar_t w = p[t] * inv;
          p[t] = w;
          const scalar_t* h = H + (b * T + t) * D;
          for (int64_t d = 0; d < D; ++d) c[d] += w * h[d];
        }
      }
    });
  });
  return {context, logits, attention, u};
}

std::tuple<Tensor, Tensor, Tensor> masked_attention_pool_backward_cpu(
    const Tensor& grad_context_in, const Tensor& grad_logits_in, const Tensor& grad_attention_in,
    const c10::optional<Tensor>& grad_u_in, const Tensor& states_in, const Tensor& mask_in, const Tensor& W_in,
    const Tensor& v_in, const Tensor& attention_in, const Tensor& u_in) {
  check_inputs(states_in, mask_in, W_in, v_in);
  const int64_t B = states_in.size(0), T = states_in.size(1), D = states_in.size(2), A = W_in.size(0);
  TORCH_CHECK(grad_context_in.dim() == 2 && grad_context_in.size(0) == B && grad_context_in.size(1) == D,
              "masked_attention_pool_backward: grad_context must be (B, D)");
  TORCH_CHECK(grad_logits_in.dim() == 2 && grad_logits_in.size(0) == B && grad_logits_in.size(1) == T,
              "masked_attention_pool_backward: grad_logits must be (B, T)");
  TORCH_CHECK(grad_attention_in.dim() == 2 && grad_attention_in.size(0) == B && grad_attention_in.size(1) == T,
              "masked_attention_pool_backward: grad_attention must be (B, T)");
  TORCH_CHECK(attention_in.dim() == 2 && attention_in.size(0) == B && attention_in.size(1) == T,
              "masked_attention_pool_backward: attention must be (B, T)");
  TORCH_CHECK(u_in.dim() == 3 && u_in.size(0) == B && u_in.size(1) == T && u_in.size(2) == A,
              "masked_attention_pool_backward: u must be (B, T, A)");
  const auto st = states_in.scalar_type();
  TORCH_CHECK(grad_context_in.scalar_type() == st && grad_logits_in.scalar_type() == st &&
                  grad_attention_in.scalar_type() == st && attention_in.scalar_type() == st &&
                  u_in.scalar_type() == st,
              "masked_attention_pool_backward: all float tensors must share the dtype of states");
  const bool has_gu = grad_u_in.has_value() && grad_u_in->defined();
  Tensor grad_u;
  if (has_gu) {
    TORCH_CHECK(grad_u_in->sizes() == u_in.sizes() && grad_u_in->scalar_type() == st,
                "masked_attention_pool_backward: grad_u must match u");
    grad_u = grad_u_in->contiguous();
  }
  const Tensor states = states_in.contiguous();
  const Tensor mask = mask_in.contiguous();
  const Tensor W = W_in.contiguous();
  const Tensor v = v_in.contiguous();
  const Tensor gc = grad_context_in.contiguous();
  const Tensor gl = grad_logits_in.contiguous();
  const Tensor ga = grad_attention_in.contiguous();
  const Tensor attention = attention_in.contiguous();
  const Tensor u = u_in.contiguous();
  const bool* M = mask.data_ptr<bool>();
  const std::vector<int64_t> off = row_offsets(M, B, T);
  const int64_t N = off[B];

  Tensor grad_states = at::empty({B, T, D}, states.options());
  Tensor grad_W, grad_v;

  AT_DISPATCH_FLOATING_TYPES(st, "masked_attention_pool_backward_cpu", [&] {
    const Tensor Hc = compact_rows<scalar_t>(states.view({B * T, D}), M, off, B, T, D);
    const Tensor Uc = compact_rows<scalar_t>(u.view({B * T, A}), M, off, B, T, A);
    Tensor Gc = at::empty({N, A}, states.options());
    Tensor gec = at::empty({N}, states.options());
    const scalar_t* H = states.data_ptr<scalar_t>();
    const scalar_t* V = v.data_ptr<scalar_t>();
    const scalar_t* GC = gc.data_ptr<scalar_t>();
    const scalar_t* GL = gl.data_ptr<scalar_t>();
    const scalar_t* GA = ga.data_ptr<scalar_t>();
    const scalar_t* P = attention.data_ptr<scalar_t>();
    const scalar_t* UC = Uc.data_ptr<scalar_t>();
    const scalar_t* GU = has_gu ? grad_u.data_ptr<scalar_t>() : nullptr;
    scalar_t* GG = Gc.data_ptr<scalar_t>();
    scalar_t* GE = gec.data_ptr<scalar_t>();
    const int64_t grain = grain_for(T * (A + D));
    // stage 1: g_e and G on the compact rows
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const bool* m = M + b * T;
        const scalar_t* p = P + b * T;
        const scalar_t* gcb = GC + b * D;
        // g_alpha_t = grad_attention_t + grad_context . h_t ; dot = sum_t alpha_t g_alpha_t
        scalar_t dot = 0;
        int64_t k = off[b];
        for (int64_t t = 0; t < T; ++t) {
          if (!m[t]) continue;
          const scalar_t* h = H + (b * T + t) * D;
          const scalar_t s = GA[b * T + t] + dot_n(gcb, h, D);
          GE[k] = s;  // g_alpha for now
          dot += p[t] * s;
          ++k;
        }
        k = off[b];
        for (int64_t t = 0; t < T; ++t) {
          if (!m[t]) continue;
          const scalar_t e = p[t] * (GE[k] - dot) + GL[b * T + t];
          GE[k] = e;
          const scalar_t* ut = UC + k * A;
          scalar_t* Gt = GG + k * A;
          if (GU != nullptr) {
            const scalar_t* gut = GU + (b * T + t) * A;
            for (int64_t a = 0; a < A; ++a) Gt[a] = (e * V[a] + gut[a]) * (scalar_t(1) - ut[a] * ut[a]);
          } else {
            for (int64_t a = 0; a < A; ++a) Gt[a] = e * V[a] * (scalar_t(1) - ut[a] * ut[a]);
          }
          ++k;
        }
      }
    });
    const Tensor GSc = at::mm(Gc, W);  // (N, D)
    grad_W = at::mm(Gc.t(), Hc);      // (A, D)
    grad_v = at::mv(Uc.t(), gec);     // (A,)
    // stage 2: grad_states = alpha grad_context + G W at valid positions, 0 at padding
    const scalar_t* GSC = GSc.data_ptr<scalar_t>();
    scalar_t* GS = grad_states.data_ptr<scalar_t>();
    at::parallel_for(0, B, grain_for(T * D), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const bool* m = M + b * T;
        const scalar_t* gcb = GC + b * D;
        int64_t k = off[b];
        for (int64_t t = 0; t < T; ++t) {
          scalar_t* gs = GS + (b * T + t) * D;
          if (!m[t]) {
            std::fill(gs, gs + D, scalar_t(0));
            continue;
          }
          const scalar_t w = P[b * T + t];
          const scalar_t* src = GSC + k * D;
          for (int64_t d = 0; d < D; ++d) gs[d] = src[d] + w * gcb[d];
          ++k;
        }
      }
    });
  });
  return {grad_states, grad_W, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(edgekd, CPU, m) {
  m.impl("masked_attention_pool", &masked_attention_pool_cpu);
  m.impl("masked_attention_pool_backward", &masked_attention_pool_backward_cpu);
}
