// Inner loop of edgekd::bilstm_attention_forward, the fused student inference (bilstm_attention.cpp
// clones it per ISA through isa_clones.h, so no include guard). It builds on the BiLSTM kernels' rows_gemv and cell_forward.
//
#include "masked_bilstm_kernels.h"

// One sequence at a time: embedding rows -> input projection -> the two LSTM directions over the
// L valid tokens -> u_t = tanh(W h_t), e_t = v . u_t -> softmax over t < L -> context -> logits.
// Every matrix product is rows_gemv over zero-padded transposed weights (prepared once per call by
// the caller, see bilstm_attention_row::RowWeights in bilstm_attention.cpp), so the whole row runs without
// a single ATen call or allocation.

// ids: the row's L token ids (validated by the caller); writes logits (C), e (Tn) and alpha (Tn),
// both 0 for t >= L.
template <typename T>
void bilstm_attention_row_forward(const ::bilstm_attention_row::RowWeights<T>& w, const int64_t* __restrict ids, int64_t L, int64_t Tn,
                         T* __restrict scratch, T* __restrict logits, T* __restrict e, T* __restrict alpha) {
  const int64_t E = w.E, H = w.H, A = w.A, D = 2 * H, G4 = 4 * H, G4p = w.G4p, Ap = w.Ap;
  T* xp = scratch;                // (L, G4p) input projection of one direction
  T* S = xp + L * G4p;            // (L, D) BiLSTM states
  T* U = S + L * D;               // (L, Ap) attention projection
  T* g = U + L * Ap;              // (G4p) h W_hh^T
  T* gs = g + G4p;                // (G4p) activated gates (unused output of cell_forward)
  T* h = gs + G4p;                // (H)
  T* c = h + H;                   // (H)
  T* cl = c + H;                  // (H) cell copy (unused output of cell_forward)
  T* ctx = cl + H;                // (D) context

  for (int dir = 0; dir < 2; ++dir) {
    // 1. input projection of the L tokens, straight from their embedding rows, plus both biases
    for (int64_t t = 0; t < L; ++t) {
      T* xt = xp + t * G4p;
      rows_gemv<T>(1, E, E, G4p, w.emb + ids[t] * E, w.wihT[dir], xt);
      const T* b = w.bias[dir];
      for (int64_t r = 0; r < G4; ++r) xt[r] += b[r];
    }
    // 2. recurrence over the valid tokens only (the reverse direction starts at the last one)
    std::fill(h, h + H, T(0));
    std::fill(c, c + H, T(0));
    std::fill(g, g + G4p, T(0));
    for (int64_t s = 0; s < L; ++s) {
      const int64_t t = dir == 0 ? s : L - 1 - s;
      if (s > 0) rows_gemv<T>(1, H, H, G4p, h, w.whhT[dir], g);
      cell_forward<T>(H, g, xp + t * G4p, c, h, gs, cl, S + t * D + dir * H);
    }
  }
  // 3. attention: u = tanh(W h_t), e_t = v . u_t, masked softmax, context
  rows_gemv<T>(L, D, D, Ap, S, w.attWT, U);
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t t = 0; t < L; ++t) {
    T* ut = U + t * Ap;
    tanh_inplace<T>(ut, A);
    const T et = dot_n<T>(ut, w.v, A);
    e[t] = et;
    mx = et > mx ? et : mx;
  }
  T sum = 0;
  for (int64_t t = 0; t < L; ++t) {
    const T ex = std::exp(e[t] - mx);
    alpha[t] = ex;
    sum += ex;
  }
  const T inv = T(1) / sum;
  std::fill(ctx, ctx + D, T(0));
  for (int64_t t = 0; t < L; ++t) {
    const T a = alpha[t] * inv;
    alpha[t] = a;
    const T* st = S + t * D;
    for (int64_t d = 0; d < D; ++d) ctx[d] += a * st[d];
  }
  for (int64_t t = L; t < Tn; ++t) {
    e[t] = T(0);
    alpha[t] = T(0);
  }
  // 4. classifier
  for (int64_t k = 0; k < w.C; ++k) logits[k] = dot_n<T>(w.clsW + k * D, ctx, D) + w.clsb[k];
}
