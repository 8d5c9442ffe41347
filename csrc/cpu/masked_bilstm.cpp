// Masked bidirectional single-layer LSTM on the CPU: forward and backward through time.
//
// Registered as the CPU kernels of edgekd::masked_bilstm and edgekd::masked_bilstm_backward (the
// schemas are defined in edgekd/ops/masked_bilstm.py). Semantics: exactly nn.LSTM(bidirectional,
// batch_first) on pack_padded_sequence(x, lengths) padded back to T, with zero initial states.
//
// Layout of the saved activations ("compact rows"): the valid timesteps of all sequences are
// stored one after the other, row off[b] + t for (batch b, time t < len[b]), where off is the
// exclusive prefix sum of lengths in batch order; rows from sum(lengths) to `capacity` are zero.
//   gates (2, capacity, 4H): activated i, f, g, o per direction;  cells (2, capacity, H): c_t.
//
// Algorithm, per direction (the two directions run in parallel with at::parallel_for when there is
// enough work to pay for waking a second thread):
//   1. input projection of all valid timesteps as one GEMM: xproj = x_valid @ W_ih^T + b_ih + b_hh;
//   2. recurrence over steps s = 0..max_len-1 with the rows sorted by length (descending), so that
//      the rows still active at step s are a prefix of the sorted order: no step is spent on
//      padding. h W_hh^T is a register-blocked matvec over a zero-padded W_hh^T for a few active
//      rows (batch-1 inference: no per-step ATen calls) and one at::mm_out over the active prefix
//      otherwise; the gate math is fused per row (vectorized activations, then c and h);
//   3. backward: the same walk in reverse, dA (gate pre-activation gradients) for every valid
//      timestep kept in compact rows; dh_{t-1} = dA W_hh per step (matvec or one GEMM), then
//      dW_hh = dA^T H_prev, dW_ih = dA^T x_valid, dx = dA W_ih as one GEMM each at the end.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "layout.h"

namespace {

// Rows active at a step up to which the register-blocked matvec loops are used instead of one
// at::mm per step (MKL wins above that; measured at batch 64, H = 50).
constexpr int64_t kSmallRows = 4;

// Multiply-adds per direction (sum(lengths) * H * 4H) below which the two directions run one after
// the other: a fork/join costs a few microseconds on an idle machine and much more on a busy one,
// while batch-1 inference at H = 50 is only ~0.3M multiply-adds per direction.
constexpr int64_t kParallelWork = int64_t(1) << 20;

// at::parallel_for over the two directions, or a plain loop when the work is small.
template <typename F>
void for_each_direction(int64_t work_per_direction, const F& f) {
  if (work_per_direction < kParallelWork) {
    f(0, 2);
  } else {
    at::parallel_for(0, 2, 1, f);
  }
}

}  // namespace

// The inner loops (masked_bilstm_kernels.h), compiled twice: for AVX2 + FMA and for the baseline
// ISA; the one the CPU supports is picked at run time. no-trapping-math lets the compiler
// if-convert the clamps of exp_approx, which it needs to vectorize the activation loops.
#define EDGEKD_ISA_KERNELS "masked_bilstm_kernels.h"
#include "isa_clones.h"

namespace {

template <typename T>
struct Kernels {
  void (*rows_gemv)(int64_t, int64_t, int64_t, int64_t, const T*, const T*, T*);
  void (*cell_forward)(int64_t, const T*, const T*, T*, T*, T*, T*, T*);
  void (*cell_backward)(int64_t, const T*, const T*, const T*, const T*, const T*, T*, T*);
};

template <typename T>
Kernels<T> pick_kernels() {
#ifdef EDGEKD_HAVE_AVX2_CLONE
  if (edgekd_use_avx2())
    return {&isa_avx2::rows_gemv<T>, &isa_avx2::cell_forward<T>, &isa_avx2::cell_backward<T>};
#endif
  return {&isa_base::rows_gemv<T>, &isa_base::cell_forward<T>, &isa_base::cell_backward<T>};
}

constexpr int64_t kPad = isa_base::kGemvBlock;

using edgekd_layout::round_up;

// w (R, C) -> (C, Cp) zero-padded transpose when transpose, else (R, Cp) zero-padded copy; Cp is
// the output row length rounded up to kPad.
template <typename T>
at::Tensor padded_weight(const at::Tensor& w, bool transpose) {
  const int64_t R = w.size(0), C = w.size(1);
  const int64_t rows = transpose ? C : R, cols = transpose ? R : C;
  const int64_t cols_p = round_up(cols, kPad);
  at::Tensor out = at::zeros({rows, cols_p}, w.options());
  const T* src = w.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  if (transpose) {
    edgekd_layout::padded_transpose_into<T>(src, R, C, kPad, dst);
  } else {
    for (int64_t r = 0; r < R; ++r) std::memcpy(dst + r * cols_p, src + r * C, sizeof(T) * C);
  }
  return out;
}

// Lengths, their prefix sums and the walk order shared by forward and backward.
struct Plan {
  int64_t B = 0, T = 0, N = 0, max_len = 0;
  std::vector<int64_t> len;    // per batch row
  std::vector<int64_t> off;    // compact row of (b, 0)
  std::vector<int64_t> order;  // batch rows sorted by length, longest first
  std::vector<int64_t> nact;   // nact[s]: rows with len > s (a prefix of `order`)
};

Plan make_plan(const at::Tensor& lengths, int64_t B, int64_t T) {
  TORCH_CHECK(lengths.device().is_cpu(), "masked_bilstm: lengths must be on the CPU for the CPU kernel");
  TORCH_CHECK(lengths.scalar_type() == at::kLong, "masked_bilstm: lengths must be int64, got ",
              lengths.scalar_type());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B, "masked_bilstm: lengths must have shape (", B,
              ",), got ", lengths.sizes());
  Plan p;
  p.B = B;
  p.T = T;
  auto lc = lengths.contiguous();
  const int64_t* l = lc.data_ptr<int64_t>();
  p.len.assign(l, l + B);
  p.off.resize(B);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(p.len[b] >= 1 && p.len[b] <= T, "masked_bilstm: lengths[", b, "] = ", p.len[b],
                " is outside [1, ", T, "]");
    p.off[b] = p.N;
    p.N += p.len[b];
    p.max_len = std::max(p.max_len, p.len[b]);
  }
  p.order.resize(B);
  std::iota(p.order.begin(), p.order.end(), 0);
  std::stable_sort(p.order.begin(), p.order.end(),
                   [&](int64_t a, int64_t b) { return p.len[a] > p.len[b]; });
  p.nact.assign(p.max_len + 1, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < p.len[b]; ++s) ++p.nact[s];
  return p;
}

// Time index of step s of a sequence of length L in direction dir (0 forward, 1 reverse).
inline int64_t time_of(int dir, int64_t s, int64_t L) { return dir == 0 ? s : L - 1 - s; }

// The valid timesteps of x (B, T, E) as compact rows (N, E); x itself when nothing is padded.
at::Tensor compact_rows(const at::Tensor& x, const Plan& p) {
  const int64_t E = x.size(2);
  if (p.N == p.B * p.T) return x.view({p.N, E});
  auto xc = at::empty({p.N, E}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_bilstm_compact", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = xc.data_ptr<scalar_t>();
    for (int64_t b = 0; b < p.B; ++b)
      std::memcpy(dst + p.off[b] * E, src + b * p.T * E, sizeof(scalar_t) * p.len[b] * E);
  });
  return xc;
}

void check_weights(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, int64_t H,
                   const char* which) {
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 4 * H && w_ih.size(1) == x.size(2), "masked_bilstm: ",
              which, " w_ih must have shape (", 4 * H, ", ", x.size(2), "), got ", w_ih.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * H && w_hh.size(1) == H, "masked_bilstm: ", which,
              " w_hh must have shape (", 4 * H, ", ", H, "), got ", w_hh.sizes());
  TORCH_CHECK(w_ih.scalar_type() == x.scalar_type() && w_hh.scalar_type() == x.scalar_type(),
              "masked_bilstm: weights must have the dtype of x");
  TORCH_CHECK(w_ih.device().is_cpu() && w_hh.device().is_cpu(), "masked_bilstm: weights must be on the CPU");
}

// ------------------------------------------------------------------------------------------------
// forward

template <typename T>
void forward_direction(int dir, const Plan& p, int64_t H, const at::Tensor& xc, const at::Tensor& w_ih,
                       const at::Tensor& w_hh, const at::Tensor& bias, T* out, T* h_n, T* c_n, T* gates,
                       T* cells) {
  const int64_t G4 = 4 * H;
  const int64_t B = p.B, Tn = p.T;
  // 1. input projection of every valid timestep: (N, 4H)
  const at::Tensor xproj = at::addmm(bias, xc, w_ih.t());
  const T* xp = xproj.data_ptr<T>();
  const int64_t G4p = round_up(G4, kPad);
  const at::Tensor wt_t = padded_weight<T>(w_hh, /*transpose=*/true);  // W_hh^T (H, G4p)
  const T* wt = wt_t.data_ptr<T>();

  at::Tensor hs_t = at::zeros({B, H}, xc.options());  // h of the sorted rows
  at::Tensor cs_t = at::zeros({B, H}, xc.options());
  at::Tensor g_t = at::zeros({B, G4p}, xc.options());  // h W_hh^T of the active rows
  T* hs = hs_t.data_ptr<T>();
  T* cs = cs_t.data_ptr<T>();
  T* gm = g_t.data_ptr<T>();

  const Kernels<T> kern = pick_kernels<T>();
  for (int64_t s = 0; s < p.max_len; ++s) {
    const int64_t n = p.nact[s];
    // 2a. recurrent term h_{s-1} W_hh^T for the active prefix (zero at s == 0, already zeroed)
    if (s > 0) {
      if (n <= kSmallRows) {
        kern.rows_gemv(n, H, H, G4p, hs, wt, gm);
      } else {
        at::Tensor gv = g_t.narrow(0, 0, n);
        at::mm_out(gv, hs_t.narrow(0, 0, n), wt_t);
      }
    }
    // 2b. fused gate math, one row at a time
    for (int64_t j = 0; j < n; ++j) {
      const int64_t b = p.order[j];
      const int64_t t = time_of(dir, s, p.len[b]);
      const int64_t row = p.off[b] + t;
      kern.cell_forward(H, gm + j * G4p, xp + row * G4, cs + j * H, hs + j * H, gates + row * G4, cells + row * H,
                        out + (b * Tn + t) * 2 * H + dir * H);
    }
  }
  // rows stop being updated once their sequence ends: the sorted state holds the final states
  for (int64_t j = 0; j < B; ++j) {
    const int64_t b = p.order[j];
    std::memcpy(h_n + b * H, hs + j * H, sizeof(T) * H);
    std::memcpy(c_n + b * H, cs + j * H, sizeof(T) * H);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> masked_bilstm_cpu(
    const at::Tensor& x_in, const at::Tensor& lengths, const at::Tensor& w_ih_f, const at::Tensor& w_hh_f,
    const at::Tensor& b_ih_f, const at::Tensor& b_hh_f, const at::Tensor& w_ih_b, const at::Tensor& w_hh_b,
    const at::Tensor& b_ih_b, const at::Tensor& b_hh_b, int64_t capacity) {
  // the kernel's own ATen calls (GEMMs) must not record autograd history
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(x_in.dim() == 3, "masked_bilstm: x must have shape (B, T, E), got ", x_in.sizes());
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "masked_bilstm: x must be float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK(x_in.device().is_cpu(), "masked_bilstm: x must be on the CPU");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), Tn = x.size(1);
  TORCH_CHECK(w_hh_f.dim() == 2, "masked_bilstm: w_hh must be 2-D, got ", w_hh_f.sizes());
  const int64_t H = w_hh_f.size(1);
  check_weights(x, w_ih_f, w_hh_f, H, "forward");
  check_weights(x, w_ih_b, w_hh_b, H, "reverse");
  for (const at::Tensor* bt : {&b_ih_f, &b_hh_f, &b_ih_b, &b_hh_b})
    TORCH_CHECK(bt->dim() == 1 && bt->size(0) == 4 * H && bt->scalar_type() == x.scalar_type(),
                "masked_bilstm: biases must have shape (", 4 * H, ",) and the dtype of x, got ", bt->sizes());
  const Plan p = make_plan(lengths, B, Tn);
  TORCH_CHECK(capacity >= p.N && capacity <= B * Tn, "masked_bilstm: capacity ", capacity,
              " must be in [sum(lengths) = ", p.N, ", B*T = ", B * Tn, "]");

  auto out = at::zeros({B, Tn, 2 * H}, x.options());
  auto h_n = at::empty({2, B, H}, x.options());
  auto c_n = at::empty({2, B, H}, x.options());
  auto gates = at::empty({2, capacity, 4 * H}, x.options());
  auto cells = at::empty({2, capacity, H}, x.options());
  if (capacity > p.N) {
    gates.narrow(1, p.N, capacity - p.N).zero_();
    cells.narrow(1, p.N, capacity - p.N).zero_();
  }
  const at::Tensor xc = compact_rows(x, p);
  const at::Tensor bias_f = b_ih_f + b_hh_f;
  const at::Tensor bias_b = b_ih_b + b_hh_b;
  const at::Tensor wih[2] = {w_ih_f.contiguous(), w_ih_b.contiguous()};
  const at::Tensor whh[2] = {w_hh_f.contiguous(), w_hh_b.contiguous()};
  const at::Tensor bias[2] = {bias_f, bias_b};

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_bilstm_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* hn = h_n.data_ptr<scalar_t>();
    scalar_t* cn = c_n.data_ptr<scalar_t>();
    scalar_t* gs = gates.data_ptr<scalar_t>();
    scalar_t* cl = cells.data_ptr<scalar_t>();
    for_each_direction(p.N * H * 4 * H, [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
      for (int64_t d = begin; d < end; ++d)
        forward_direction<scalar_t>(static_cast<int>(d), p, H, xc, wih[d], whh[d], bias[d], o, hn + d * B * H,
                                    cn + d * B * H, gs + d * capacity * 4 * H, cl + d * capacity * H);
    });
  });
  return {out, h_n, c_n, gates, cells};
}

// ------------------------------------------------------------------------------------------------
// backward

template <typename T>
void backward_direction(int dir, const Plan& p, int64_t H, const T* gout /*(B,T,2H)*/, const T* ghn /*(B,H)*/,
                        const T* gcn, const T* out /*(B,T,2H)*/, const T* gates /*(cap,4H)*/,
                        const T* cells /*(cap,H)*/, const at::Tensor& w_hh, at::Tensor& dA /*(N,4H)*/,
                        at::Tensor& hprev /*(N,H)*/) {
  const int64_t G4 = 4 * H;
  const int64_t B = p.B, Tn = p.T;
  const int64_t Hp = round_up(H, kPad);
  const at::Tensor wp_t = padded_weight<T>(w_hh, /*transpose=*/false);  // W_hh (4H, Hp)
  const T* wp = wp_t.data_ptr<T>();
  at::Tensor dh_t = at::zeros({B, Hp}, w_hh.options());
  at::Tensor dc_t = at::zeros({B, H}, w_hh.options());
  at::Tensor da_t = at::zeros({B, G4}, w_hh.options());
  T* dhs = dh_t.data_ptr<T>();
  T* dcs = dc_t.data_ptr<T>();
  T* das = da_t.data_ptr<T>();
  T* dA_all = dA.data_ptr<T>();
  T* hp = hprev.data_ptr<T>();
  const std::vector<T> zero_state(H, T(0));
  const T* zeros = zero_state.data();
  const Kernels<T> kern = pick_kernels<T>();

  for (int64_t s = p.max_len - 1; s >= 0; --s) {
    const int64_t n = p.nact[s];
    const int64_t n_next = p.nact[s + 1];  // nact has max_len + 1 entries, the last is 0
    // rows whose last step is s start here with the gradients of the final states
    for (int64_t j = n_next; j < n; ++j) {
      const int64_t b = p.order[j];
      std::memcpy(dhs + j * Hp, ghn + b * H, sizeof(T) * H);
      std::memcpy(dcs + j * H, gcn + b * H, sizeof(T) * H);
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t b = p.order[j];
      const int64_t L = p.len[b];
      const int64_t t = time_of(dir, s, L);
      const int64_t row = p.off[b] + t;
      const T* cp = s > 0 ? cells + (p.off[b] + time_of(dir, s - 1, L)) * H : zeros;
      T* da = das + j * G4;
      kern.cell_backward(H, gates + row * G4, cells + row * H, cp, gout + (b * Tn + t) * 2 * H + dir * H,
                         dhs + j * Hp, dcs + j * H, da);
      std::memcpy(dA_all + row * G4, da, sizeof(T) * G4);
      // h_{t-1} of this step (zero at the first step), for dW_hh = dA^T H_prev at the end
      T* hrow = hp + row * H;
      if (s > 0) {
        std::memcpy(hrow, out + (b * Tn + time_of(dir, s - 1, L)) * 2 * H + dir * H, sizeof(T) * H);
      } else {
        std::fill(hrow, hrow + H, T(0));
      }
    }
    // dh_{s-1} = dA_s W_hh for the rows still active at step s - 1 (all of the n rows)
    if (s > 0) {
      if (n <= kSmallRows) {
        kern.rows_gemv(n, G4, G4, Hp, das, wp, dhs);
      } else {
        at::Tensor dhv = dh_t.narrow(0, 0, n);
        at::mm_out(dhv, da_t.narrow(0, 0, n), wp_t);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
masked_bilstm_backward_cpu(const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                           const at::Tensor& x_in, const at::Tensor& lengths, const at::Tensor& w_ih_f,
                           const at::Tensor& w_hh_f, const at::Tensor& w_ih_b, const at::Tensor& w_hh_b,
                           const at::Tensor& output, const at::Tensor& gates, const at::Tensor& cells) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(x_in.dim() == 3 && x_in.device().is_cpu(), "masked_bilstm_backward: x must be a (B, T, E) CPU tensor");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), Tn = x.size(1), E = x.size(2);
  TORCH_CHECK(w_hh_f.dim() == 2, "masked_bilstm_backward: w_hh must be 2-D");
  const int64_t H = w_hh_f.size(1);
  check_weights(x, w_ih_f, w_hh_f, H, "forward");
  check_weights(x, w_ih_b, w_hh_b, H, "reverse");
  const Plan p = make_plan(lengths, B, Tn);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({B, Tn, 2 * H}) && output.sizes() == grad_output.sizes(),
              "masked_bilstm_backward: grad_output and output must have shape (", B, ", ", Tn, ", ", 2 * H, ")");
  TORCH_CHECK(grad_h_n.sizes() == at::IntArrayRef({2, B, H}) && grad_c_n.sizes() == grad_h_n.sizes(),
              "masked_bilstm_backward: grad_h_n and grad_c_n must have shape (2, ", B, ", ", H, ")");
  TORCH_CHECK(gates.dim() == 3 && gates.size(0) == 2 && gates.size(1) >= p.N && gates.size(2) == 4 * H,
              "masked_bilstm_backward: gates must have shape (2, capacity >= ", p.N, ", ", 4 * H, "), got ",
              gates.sizes());
  TORCH_CHECK(cells.dim() == 3 && cells.size(0) == 2 && cells.size(1) == gates.size(1) && cells.size(2) == H,
              "masked_bilstm_backward: cells must have shape (2, ", gates.size(1), ", ", H, "), got ", cells.sizes());
  for (const at::Tensor* t : {&grad_output, &grad_h_n, &grad_c_n, &output, &gates, &cells})
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device().is_cpu(),
                "masked_bilstm_backward: all tensors must be CPU tensors of the dtype of x");

  const at::Tensor gout = grad_output.contiguous();
  const at::Tensor ghn = grad_h_n.contiguous();
  const at::Tensor gcn = grad_c_n.contiguous();
  const at::Tensor outc = output.contiguous();
  const at::Tensor gatesc = gates.contiguous();
  const at::Tensor cellsc = cells.contiguous();
  const int64_t cap = gates.size(1);
  const at::Tensor xc = compact_rows(x, p);
  const at::Tensor wih[2] = {w_ih_f.contiguous(), w_ih_b.contiguous()};
  const at::Tensor whh[2] = {w_hh_f.contiguous(), w_hh_b.contiguous()};

  at::Tensor dA[2], hprev[2], dwih[2], dwhh[2], db[2], dxc[2];
  for (int d = 0; d < 2; ++d) {
    dA[d] = at::empty({p.N, 4 * H}, x.options());
    hprev[d] = at::empty({p.N, H}, x.options());
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_bilstm_backward_cpu", [&] {
    for_each_direction(p.N * H * 4 * H, [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
      for (int64_t d = begin; d < end; ++d) {
        backward_direction<scalar_t>(static_cast<int>(d), p, H, gout.data_ptr<scalar_t>(),
                                     ghn.data_ptr<scalar_t>() + d * B * H, gcn.data_ptr<scalar_t>() + d * B * H,
                                     outc.data_ptr<scalar_t>(), gatesc.data_ptr<scalar_t>() + d * cap * 4 * H,
                                     cellsc.data_ptr<scalar_t>() + d * cap * H, whh[d], dA[d], hprev[d]);
        // weight gradients of this direction: one GEMM each over all valid timesteps
        const at::Tensor dAt = dA[d].t();
        dwih[d] = at::mm(dAt, xc);
        dwhh[d] = at::mm(dAt, hprev[d]);
        db[d] = dA[d].sum(0);
        dxc[d] = at::mm(dA[d], wih[d]);
      }
    });
  });
  at::Tensor dx_valid = dxc[0].add_(dxc[1]);
  at::Tensor dx;
  if (p.N == B * Tn) {
    dx = dx_valid.view({B, Tn, E});
  } else {
    dx = at::zeros({B, Tn, E}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "masked_bilstm_scatter", [&] {
      const scalar_t* src = dx_valid.data_ptr<scalar_t>();
      scalar_t* dst = dx.data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b)
        std::memcpy(dst + b * Tn * E, src + p.off[b] * E, sizeof(scalar_t) * p.len[b] * E);
    });
  }
  return {dx, dwih[0], dwhh[0], db[0], db[0].clone(), dwih[1], dwhh[1], db[1], db[1].clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(edgekd, CPU, m) {
  m.impl("masked_bilstm", &masked_bilstm_cpu);
  m.impl("masked_bilstm_backward", &masked_bilstm_backward_cpu);
}
