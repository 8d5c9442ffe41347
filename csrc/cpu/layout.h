// Small layout helpers shared by the CPU kernels: rounding to the matvec register block, the
// zero-padded transpose the register-blocked matvecs read, and the one-pass check of a batch of
// the BiLSTM-attention ops (ids in range, a post-padded 0/1 mask with >= 1 token per row).
#pragma once

#include <algorithm>
#include <cstdint>

namespace edgekd_layout {

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// dst (C, round_up(R, pad)) = zero-padded transpose of src (R, C), both row-major.
template <typename T>
void padded_transpose_into(const T* __restrict src, int64_t R, int64_t C, int64_t pad, T* __restrict dst) {
  const int64_t Rp = round_up(R, pad);
  std::fill(dst, dst + C * Rp, T(0));
  constexpr int64_t tile = 16;  // tiles keep both the strided reads and the writes in L1
  for (int64_t r0 = 0; r0 < R; r0 += tile)
    for (int64_t c0 = 0; c0 < C; c0 += tile) {
      const int64_t r1 = std::min(R, r0 + tile), c1 = std::min(C, c0 + tile);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * Rp + r] = src[r * C + c];
    }
}

// One pass over a (B, T) batch of ids and mask: len[b] = valid tokens of row b, and, when
// mask_bool is given, the mask as bool. Returns false when an id is outside [0, V), the mask is
// not 0/1 and post-padded (ones then zeros), or a row has no valid token.
template <typename M>
bool post_padded_lengths(const int64_t* ids, const M* mask, int64_t B, int64_t T, int64_t V, int64_t* len,
                         bool* mask_bool = nullptr) {
  bool ok = true;
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    bool in_padding = false;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t mv = static_cast<int64_t>(mask[b * T + t]);
      if (mv == 1) {
        ok &= !in_padding;  // a one after a zero: not post-padded
        ++n;
      } else {
        ok &= mv == 0;  // not a 0/1 mask
        in_padding = true;
      }
      if (mask_bool != nullptr) mask_bool[b * T + t] = mv == 1;
      const int64_t id = ids[b * T + t];
      ok &= id >= 0 && id < V;
    }
    ok &= n >= 1;
    len[b] = n;
  }
  return ok;
}

}  // namespace edgekd_layout
