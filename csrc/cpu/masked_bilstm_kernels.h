// Inner loops of the masked BiLSTM CPU kernels (included by masked_bilstm.cpp and bilstm_attention.cpp).
//
// Deliberately without an include guard: each including file includes it twice, once inside
// `namespace isa_avx2` under `#pragma GCC target("avx2,fma")` and once inside `namespace isa_base`
// for any x86-64 (or other) CPU, and picks one at run time. Everything here is plain loops over
// raw pointers marked __restrict with branch-free activations, written so that the compiler
// vectorizes them; the includes they need come before the namespaces in masked_bilstm.cpp.

#include "vec_math.h"  // exp_approx, sigmoid_f, tanh_f, tanh_inplace, dot_n

// y[j, :Mp] = a[j, :K] @ Bm for j < n, with Bm (K, Mp) row-major and Mp a multiple of kGemvBlock
// (the callers zero-pad the weights). Each block of 4 vectors of outputs (32 floats or 16 doubles)
// is accumulated in 4 registers over all of K: the batch-1 matvec of the recurrence, h W_hh^T in
// the forward (K = H, Bm = W_hh^T padded) and dA W_hh in the backward (K = 4H, Bm = W_hh padded).
// GCC vector types (32 bytes: one AVX register, two SSE registers) pin the accumulators in
// registers; plain arrays were spilled to the stack on every k by the auto-vectorizer.
constexpr int64_t kGemvBlock = 32;

template <typename T>
void rows_gemv(int64_t n, int64_t K, int64_t lda, int64_t Mp, const T* __restrict a, const T* __restrict Bm,
               T* __restrict y) {
  typedef T vec __attribute__((vector_size(32)));
  constexpr int64_t lanes = 32 / sizeof(T);
  constexpr int64_t block = 4 * lanes;
  static_assert(kGemvBlock % block == 0, "padding must be a multiple of the register block");
  for (int64_t j = 0; j < n; ++j) {
    const T* __restrict aj = a + j * lda;
    T* __restrict yj = y + j * Mp;
    for (int64_t m0 = 0; m0 < Mp; m0 += block) {
      vec c0 = {}, c1 = {}, c2 = {}, c3 = {};
      for (int64_t k = 0; k < K; ++k) {
        const T ak = aj[k];
        const T* __restrict b = Bm + k * Mp + m0;
        vec b0, b1, b2, b3;
        std::memcpy(&b0, b, sizeof(vec));
        std::memcpy(&b1, b + lanes, sizeof(vec));
        std::memcpy(&b2, b + 2 * lanes, sizeof(vec));
        std::memcpy(&b3, b + 3 * lanes, sizeof(vec));
        c0 += ak * b0;
        c1 += ak * b1;
        c2 += ak * b2;
        c3 += ak * b3;
      }
      std::memcpy(yj + m0, &c0, sizeof(vec));
      std::memcpy(yj + m0 + lanes, &c1, sizeof(vec));
      std::memcpy(yj + m0 + 2 * lanes, &c2, sizeof(vec));
      std::memcpy(yj + m0 + 3 * lanes, &c3, sizeof(vec));
    }
  }
}

// One LSTM cell, forward: a = h_{t-1} W_hh^T (4H), xr = x_t W_ih^T + b (4H). Writes the activated
// gates (i, f, g, o) to gs, updates c and h in place and copies them to cl and o.
template <typename T>
void cell_forward(int64_t H, const T* __restrict a, const T* __restrict xr, T* __restrict c, T* __restrict h,
                  T* __restrict gs, T* __restrict cl, T* __restrict out) {
  for (int64_t r = 0; r < 2 * H; ++r) gs[r] = sigmoid_f(a[r] + xr[r]);
  for (int64_t r = 2 * H; r < 3 * H; ++r) gs[r] = tanh_f(a[r] + xr[r]);
  for (int64_t r = 3 * H; r < 4 * H; ++r) gs[r] = sigmoid_f(a[r] + xr[r]);
  const T* __restrict ig = gs;
  const T* __restrict fg = gs + H;
  const T* __restrict gg = gs + 2 * H;
  const T* __restrict og = gs + 3 * H;
  for (int64_t k = 0; k < H; ++k) {
    const T cn = fg[k] * c[k] + ig[k] * gg[k];
    c[k] = cn;
    cl[k] = cn;
  }
  for (int64_t k = 0; k < H; ++k) {
    const T hn = og[k] * tanh_f(c[k]);
    h[k] = hn;
    out[k] = hn;
  }
}

// One LSTM cell, backward. g: activated gates, c: c_t, cp: c_{t-1} (zeros at the first step),
// go: gradient of the output h_t; dh: recurrent gradient of h_t (in), dc: recurrent gradient of
// c_t (in) -> of c_{t-1} (out); da: gradients of the gate pre-activations (out, 4H).
template <typename T>
void cell_backward(int64_t H, const T* __restrict g, const T* __restrict c, const T* __restrict cp,
                   const T* __restrict go, const T* __restrict dh, T* __restrict dc, T* __restrict da) {
  const T* __restrict ig = g;
  const T* __restrict fg = g + H;
  const T* __restrict gg = g + 2 * H;
  const T* __restrict og = g + 3 * H;
  for (int64_t k = 0; k < H; ++k) {
    const T tc = tanh_f(c[k]);
    const T dhk = dh[k] + go[k];
    const T dck = dc[k] + dhk * og[k] * (T(1) - tc * tc);
    da[k] = dck * gg[k] * ig[k] * (T(1) - ig[k]);
    da[H + k] = dck * cp[k] * fg[k] * (T(1) - fg[k]);
    da[2 * H + k] = dck * ig[k] * (T(1) - gg[k] * gg[k]);
    da[3 * H + k] = dhk * tc * og[k] * (T(1) - og[k]);
    dc[k] = dck * fg[k];
  }
}
