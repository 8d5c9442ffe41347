// edgekd::bilstm_attention_forward on the CPU: the whole inference forward of the DiXtill student
// (BiLSTMAttentionStudent) in one call: input check, embedding gather, masked BiLSTM over each
// row's valid tokens, masked additive attention pooling and the linear classifier.
//
// Why one op: at batch 1 the student's forward is ~1.3M multiply-adds (T = 32, H = 50), i.e. tens of
// microseconds of arithmetic, while the unfused native path spent most of its ~0.3 ms in per-call
// overhead (three custom-op dispatches, several ATen allocations, the embedding and the Linear).
// Here the weights are transposed and zero-padded (bilstm_attention_pack, cached by the caller), then each row
// runs in raw loops (bilstm_attention_kernels.h: register-blocked matvecs, vectorized activations)
// with no ATen call inside; rows run in parallel with at::parallel_for when there are enough.
//
// Inference only (no autograd: the training path uses masked_bilstm + masked_attention_pool, whose
// backward ops exist). The schemas, fake kernels and the PyTorch fallbacks are defined in Python
// (edgekd/ops/bilstm_attention.py). An invalid batch (ids out of range, a mask that is not 0/1 and
// post-padded, an empty row) raises an error naming "invalid batch"; the public function then
// re-checks it (check_bilstm_attention_inputs) for a detailed EdgekdValueError message.
//
// Also here: edgekd::bilstm_attention_check_inputs, the one-pass check of a batch that the
// student's differentiable forward runs before the BiLSTM (the same post_padded_lengths of layout.h
// that the fused forward runs inside).
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

#include "layout.h"

// What one row's forward reads: sizes and raw pointers to the prepared weights.
namespace bilstm_attention_row {
template <typename T>
struct RowWeights {
  int64_t E, H, A, C;  // embed, hidden, attention, classes
  int64_t G4p, Ap;     // 4H and A rounded up to kGemvBlock
  const T* emb;        // (V, E)
  const T* wihT[2];    // (E, G4p) W_ih^T per direction, zero-padded columns
  const T* whhT[2];    // (H, G4p) W_hh^T
  const T* bias[2];    // (4H) b_ih + b_hh
  const T* attWT;      // (2H, Ap) W^T of the attention
  const T* v;          // (A)
  const T* clsW;       // (C, 2H)
  const T* clsb;       // (C)
};

// Scratch elements one row needs for sequences of up to Tmax tokens (see bilstm_attention_row_forward).
template <typename T>
int64_t row_scratch_size(const RowWeights<T>& w, int64_t Tmax) {
  const int64_t D = 2 * w.H;
  return Tmax * w.G4p + Tmax * D + Tmax * w.Ap + 2 * w.G4p + 3 * w.H + D;
}
}  // namespace bilstm_attention_row

#define EDGEKD_ISA_KERNELS "bilstm_attention_kernels.h"  // (includes masked_bilstm_kernels.h)
#include "isa_clones.h"

namespace {

using at::Tensor;

constexpr int64_t kPad = isa_base::kGemvBlock;

using edgekd_layout::round_up;

// Size of the packed weights: [W_ih^T fwd, W_ih^T rev (E, G4p) | W_hh^T fwd, rev (H, G4p) |
// bias fwd, rev (G4p) | attention W^T (2H, Ap)], each transposed matrix zero-padded to the
// register block (the layout rows_gemv reads).
int64_t packed_size(int64_t E, int64_t H, int64_t A) {
  const int64_t G4p = round_up(4 * H, kPad), Ap = round_up(A, kPad);
  return 2 * E * G4p + 2 * H * G4p + 2 * G4p + 2 * H * Ap;
}

void check_matrix(const Tensor& t, int64_t rows, int64_t cols, const char* name, const Tensor& like) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, "bilstm_attention_forward: ", name,
              " must have shape (", rows, ", ", cols, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "bilstm_attention_forward: ", name,
              " must have the dtype of the embedding (", like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "bilstm_attention_forward: ", name, " must be on the CPU");
}

void check_vector(const Tensor& t, int64_t n, const char* name, const Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, "bilstm_attention_forward: ", name, " must have shape (", n,
              ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "bilstm_attention_forward: ", name,
              " must have the dtype of the embedding (", like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "bilstm_attention_forward: ", name, " must be on the CPU");
}

// Checks the 8 LSTM tensors and the attention W against each other and against `like` (dtype,
// CPU; E = like.size(1) when like is the embedding); returns H.
int64_t check_lstm_attention(const Tensor& w_ih_f, const Tensor& w_hh_f, const Tensor& b_ih_f, const Tensor& b_hh_f,
                             const Tensor& w_ih_b, const Tensor& w_hh_b, const Tensor& b_ih_b, const Tensor& b_hh_b,
                             const Tensor& att_W, int64_t E, const Tensor& like) {
  TORCH_CHECK(w_hh_f.dim() == 2 && w_hh_f.size(0) % 4 == 0 && w_hh_f.size(0) > 0,
              "bilstm_attention_forward: w_hh must be (4H, H), got ", w_hh_f.sizes());
  const int64_t H = w_hh_f.size(0) / 4;
  check_matrix(w_ih_f, 4 * H, E, "w_ih", like);
  check_matrix(w_hh_f, 4 * H, H, "w_hh", like);
  check_matrix(w_ih_b, 4 * H, E, "w_ih_reverse", like);
  check_matrix(w_hh_b, 4 * H, H, "w_hh_reverse", like);
  check_vector(b_ih_f, 4 * H, "b_ih", like);
  check_vector(b_hh_f, 4 * H, "b_hh", like);
  check_vector(b_ih_b, 4 * H, "b_ih_reverse", like);
  check_vector(b_hh_b, 4 * H, "b_hh_reverse", like);
  TORCH_CHECK(att_W.dim() == 2, "bilstm_attention_forward: attention W must be (A, 2H), got ", att_W.sizes());
  check_matrix(att_W, att_W.size(0), 2 * H, "attention W", like);
  return H;
}

// edgekd::bilstm_attention_pack: the weights in the layout the forward reads (see packed_size).
// PackedWeightsCache (edgekd/ops/bilstm_attention.py) keeps it while the weights do not change, which saves the
// transposes, ~20 us of a ~100 us batch-1 forward.
Tensor bilstm_attention_pack_cpu(const Tensor& w_ih_f, const Tensor& w_hh_f, const Tensor& b_ih_f,
                                 const Tensor& b_hh_f, const Tensor& w_ih_b, const Tensor& w_hh_b,
                                 const Tensor& b_ih_b, const Tensor& b_hh_b, const Tensor& att_W) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(w_ih_f.dim() == 2, "bilstm_attention_pack: w_ih must be (4H, E), got ", w_ih_f.sizes());
  TORCH_CHECK(w_ih_f.scalar_type() == at::kFloat || w_ih_f.scalar_type() == at::kDouble,
              "bilstm_attention_pack: weights must be float32 or float64, got ", w_ih_f.scalar_type());
  const int64_t E = w_ih_f.size(1);
  const int64_t H = check_lstm_attention(w_ih_f, w_hh_f, b_ih_f, b_hh_f, w_ih_b, w_hh_b, b_ih_b, b_hh_b, att_W, E, w_ih_f);
  const int64_t A = att_W.size(0);
  const int64_t G4p = round_up(4 * H, kPad);
  Tensor out = at::empty({packed_size(E, H, A)}, w_ih_f.options());
  AT_DISPATCH_FLOATING_TYPES(w_ih_f.scalar_type(), "bilstm_attention_pack", [&] {
    using T = scalar_t;
    T* P = out.data_ptr<T>();
    const Tensor wi[2] = {w_ih_f.contiguous(), w_ih_b.contiguous()};
    const Tensor wh[2] = {w_hh_f.contiguous(), w_hh_b.contiguous()};
    const Tensor bi[2] = {b_ih_f.contiguous(), b_ih_b.contiguous()};
    const Tensor bh[2] = {b_hh_f.contiguous(), b_hh_b.contiguous()};
    for (int d = 0; d < 2; ++d) edgekd_layout::padded_transpose_into<T>(wi[d].data_ptr<T>(), 4 * H, E, kPad, P + d * E * G4p);
    T* q = P + 2 * E * G4p;
    for (int d = 0; d < 2; ++d) edgekd_layout::padded_transpose_into<T>(wh[d].data_ptr<T>(), 4 * H, H, kPad, q + d * H * G4p);
    q += 2 * H * G4p;
    for (int d = 0; d < 2; ++d) {
      const T* x = bi[d].data_ptr<T>();
      const T* y = bh[d].data_ptr<T>();
      T* b = q + d * G4p;
      std::fill(b, b + G4p, T(0));
      for (int64_t r = 0; r < 4 * H; ++r) b[r] = x[r] + y[r];
    }
    q += 2 * G4p;
    edgekd_layout::padded_transpose_into<T>(att_W.contiguous().data_ptr<T>(), A, 2 * H, kPad, q);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor> bilstm_attention_forward_cpu(
    const Tensor& input_ids_in, const Tensor& mask_in, const Tensor& emb_in, const Tensor& w_ih_f,
    const Tensor& w_hh_f, const Tensor& b_ih_f, const Tensor& b_hh_f, const Tensor& w_ih_b, const Tensor& w_hh_b,
    const Tensor& b_ih_b, const Tensor& b_hh_b, const Tensor& att_W_in, const Tensor& att_v_in,
    const Tensor& cls_W_in, const Tensor& cls_b_in, const c10::optional<Tensor>& packed) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK(input_ids_in.dim() == 2 && mask_in.dim() == 2 && input_ids_in.sizes() == mask_in.sizes(),
              "bilstm_attention_forward: invalid batch: input_ids and attention_mask must be (B, T) of the same shape");
  TORCH_CHECK(input_ids_in.scalar_type() == at::kLong, "bilstm_attention_forward: invalid batch: input_ids must be int64");
  TORCH_CHECK(!at::isFloatingType(mask_in.scalar_type()) && !at::isComplexType(mask_in.scalar_type()),
              "bilstm_attention_forward: invalid batch: attention_mask must be bool or integer");
  TORCH_CHECK(input_ids_in.size(0) > 0 && input_ids_in.size(1) > 0, "bilstm_attention_forward: invalid batch: empty");
  TORCH_CHECK(input_ids_in.device().is_cpu() && mask_in.device().is_cpu(),
              "bilstm_attention_forward: invalid batch: CPU tensors only");
  TORCH_CHECK(emb_in.dim() == 2, "bilstm_attention_forward: embedding must be (V, E), got ", emb_in.sizes());
  TORCH_CHECK(emb_in.scalar_type() == at::kFloat || emb_in.scalar_type() == at::kDouble,
              "bilstm_attention_forward: embedding must be float32 or float64, got ", emb_in.scalar_type());
  TORCH_CHECK(emb_in.device().is_cpu(), "bilstm_attention_forward: embedding must be on the CPU");
  const int64_t V = emb_in.size(0), E = emb_in.size(1);
  const int64_t H = check_lstm_attention(w_ih_f, w_hh_f, b_ih_f, b_hh_f, w_ih_b, w_hh_b, b_ih_b, b_hh_b, att_W_in, E,
                                         emb_in);
  const int64_t D = 2 * H, A = att_W_in.size(0);
  check_vector(att_v_in, A, "attention v", emb_in);
  TORCH_CHECK(cls_W_in.dim() == 2, "bilstm_attention_forward: classifier weight must be (C, 2H), got ", cls_W_in.sizes());
  const int64_t C = cls_W_in.size(0);
  check_matrix(cls_W_in, C, D, "classifier weight", emb_in);
  check_vector(cls_b_in, C, "classifier bias", emb_in);

  const Tensor ids = input_ids_in.contiguous();
  const Tensor mask = mask_in.contiguous();
  const int64_t B = ids.size(0), Tn = ids.size(1);
  std::vector<int64_t> len(B);
  bool ok = false;
  AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, mask.scalar_type(), "bilstm_attention_forward_mask", [&] {
    ok = edgekd_layout::post_padded_lengths<scalar_t>(ids.data_ptr<int64_t>(), mask.data_ptr<scalar_t>(), B, Tn, V,
                                                   len.data());
  });
  TORCH_CHECK(ok, "bilstm_attention_forward: invalid batch: ids must lie in [0, ", V,
              "), the mask must be 0/1 and post-padded with >= 1 valid token per row");

  Tensor logits = at::empty({B, C}, emb_in.options());
  Tensor e = at::empty({B, Tn}, emb_in.options());
  Tensor alpha = at::empty({B, Tn}, emb_in.options());
  int64_t max_len = 0, total = 0;
  for (int64_t b = 0; b < B; ++b) {
    max_len = std::max(max_len, len[b]);
    total += len[b];
  }

  const int64_t G4p = round_up(4 * H, kPad), Ap = round_up(A, kPad);
  const int64_t psize = packed_size(E, H, A);
  Tensor pk;
  if (packed.has_value() && packed->defined()) {
    TORCH_CHECK(packed->dim() == 1 && packed->size(0) == psize && packed->scalar_type() == emb_in.scalar_type() &&
                    packed->device().is_cpu() && packed->is_contiguous(),
                "bilstm_attention_forward: packed must be the contiguous (", psize,
                ",) CPU tensor of bilstm_attention_pack for these weights, got ", packed->sizes());
    pk = *packed;
  } else {
    pk = bilstm_attention_pack_cpu(w_ih_f, w_hh_f, b_ih_f, b_hh_f, w_ih_b, w_hh_b, b_ih_b, b_hh_b, att_W_in);
  }

  AT_DISPATCH_FLOATING_TYPES(emb_in.scalar_type(), "bilstm_attention_forward", [&] {
    using T = scalar_t;
    const Tensor emb = emb_in.contiguous();
    const Tensor v = att_v_in.contiguous();
    const Tensor clsW = cls_W_in.contiguous();
    const Tensor clsb = cls_b_in.contiguous();
    const T* P = pk.data_ptr<T>();

    bilstm_attention_row::RowWeights<T> wb;
    wb.E = E;
    wb.H = H;
    wb.A = A;
    wb.C = C;
    wb.G4p = G4p;
    wb.Ap = Ap;
    wb.emb = emb.data_ptr<T>();
    wb.wihT[0] = P;
    wb.wihT[1] = P + E * G4p;
    wb.whhT[0] = P + 2 * E * G4p;
    wb.whhT[1] = wb.whhT[0] + H * G4p;
    wb.bias[0] = wb.whhT[1] + H * G4p;
    wb.bias[1] = wb.bias[0] + G4p;
    wb.attWT = wb.bias[1] + G4p;
    wb.v = v.data_ptr<T>();
    wb.clsW = clsW.data_ptr<T>();
    wb.clsb = clsb.data_ptr<T>();
    const int64_t scratch_n = bilstm_attention_row::row_scratch_size<T>(wb, max_len);

    const int64_t* I = ids.data_ptr<int64_t>();
    T* LG = logits.data_ptr<T>();
    T* EP = e.data_ptr<T>();
    T* AP = alpha.data_ptr<T>();
    const bool avx2 = edgekd_use_avx2();
    auto run_rows = [&](int64_t b0, int64_t b1) {
      std::vector<T> scratch(scratch_n);
      for (int64_t b = b0; b < b1; ++b) {
#ifdef EDGEKD_HAVE_AVX2_CLONE
        if (avx2) {
          isa_avx2::bilstm_attention_row_forward<T>(wb, I + b * Tn, len[b], Tn, scratch.data(), LG + b * C, EP + b * Tn,
                                           AP + b * Tn);
          continue;
        }
#endif
        (void)avx2;
        isa_base::bilstm_attention_row_forward<T>(wb, I + b * Tn, len[b], Tn, scratch.data(), LG + b * C, EP + b * Tn,
                                         AP + b * Tn);
      }
    };
    // ~ 4H (E + H) * 2 + 2H * A multiply-adds per token; below ~1M in all a second thread costs
    // more to wake than it saves
    const int64_t work = total * (8 * H * (E + H) + D * A);
    if (B > 1 && work >= (int64_t(1) << 21)) {
      const int64_t per_row = std::max<int64_t>(1, work / B);
      at::parallel_for(0, B, std::max<int64_t>(1, (int64_t(1) << 20) / per_row), run_rows);
    } else {
      run_rows(0, B);
    }
  });
  return {logits, e, alpha};
}

// edgekd::bilstm_attention_check_inputs: one pass over a batch of (input_ids, attention_mask) that
// returns what the unfused forward needs (lengths, bool mask) and whether the batch is valid: ids in
// [0, vocab_size), a 0/1 post-padded mask (ones then zeros) with >= 1 valid token per row. It
// replaces ~15 small tensor ops (and their per-call overhead) on the batch-1 path. The third output
// (a 0-dim int64 tensor) is N = sum(lengths) (>= B) when the batch is valid and -1 when it is not; the Python caller
// (check_bilstm_attention_inputs) then finds the problem with tensor ops for a detailed message.
std::tuple<Tensor, Tensor, Tensor> bilstm_attention_check_inputs_cpu(const Tensor& ids_in, const Tensor& mask_in,
                                                                     int64_t vocab_size) {
  TORCH_CHECK(ids_in.dim() == 2 && mask_in.dim() == 2 && ids_in.sizes() == mask_in.sizes(),
              "bilstm_attention_check_inputs: input_ids and attention_mask must be (B, T) of the same shape");
  TORCH_CHECK(ids_in.scalar_type() == at::kLong, "bilstm_attention_check_inputs: input_ids must be int64");
  TORCH_CHECK(ids_in.device().is_cpu() && mask_in.device().is_cpu(), "bilstm_attention_check_inputs: CPU tensors only");
  const Tensor ids = ids_in.contiguous();
  const Tensor mask = mask_in.contiguous();
  const int64_t B = ids.size(0), T = ids.size(1);
  Tensor lengths = at::empty({B}, ids.options());
  Tensor mask_bool = at::empty({B, T}, ids.options().dtype(at::kBool));
  bool ok = false;
  AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, mask.scalar_type(), "bilstm_attention_check_inputs", [&] {
    ok = edgekd_layout::post_padded_lengths<scalar_t>(ids.data_ptr<int64_t>(), mask.data_ptr<scalar_t>(), B, T,
                                                      vocab_size, lengths.data_ptr<int64_t>(),
                                                      mask_bool.data_ptr<bool>());
  });
  const int64_t* Lp = lengths.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) total += Lp[b];
  return {lengths, mask_bool, at::scalar_tensor(ok ? total : int64_t(-1), ids.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(edgekd, CPU, m) {
  m.impl("bilstm_attention_forward", &bilstm_attention_forward_cpu);
  m.impl("bilstm_attention_pack", &bilstm_attention_pack_cpu);
  m.impl("bilstm_attention_check_inputs", &bilstm_attention_check_inputs_cpu);
}
