// C++ CPU kernels of the perturbed top-k ops (edgekd::perturbed_topk_*).
//
// Schemas are defined in Python (edgekd/ops/perturbed_topk.py); this file only registers the CPU
// implementations. No dense (B,S,k,N) or (B,k,N) tensor is built by the fused ops: the forward keeps
// the selected positions, indices (B,S,k) int64, and everything else is computed from them.
//
// Selection, per (b, s): perturbed scores p = scores[b] + sigma * noise[b, s] (the product is rounded
// before the sum, exactly as the PyTorch reference does it), the k largest among the valid positions
// (mask true) by std::nth_element, ties broken towards the lower position, then the k positions sorted
// ascending. For float the value and the position are packed into one uint64 key so nth_element
// compares plain integers.
//
// Accumulation over samples: for a row i of the output, the S positions idx_s(i) repeat a lot (a
// position keeps its rank in most samples when sigma is small against the gaps between scores). The
// kernels sort the S positions of row i and visit each distinct position once with its count, so the
// work is (distinct pairs)·D instead of S·k·D, and identical results follow whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// input checks

void check_scores_noise(const at::Tensor& scores, const at::Tensor& noise, int64_t k, double sigma,
                        const char* op) {
  TORCH_CHECK(scores.dim() == 2, op, ": scores must be (B, N), got ", scores.dim(), " dims");
  TORCH_CHECK(noise.dim() == 3, op, ": noise must be (B, S, N), got ", noise.dim(), " dims");
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble, op,
              ": scores must be float32 or float64, got ", scores.scalar_type());
  TORCH_CHECK(noise.scalar_type() == scores.scalar_type(), op, ": noise dtype ",
              noise.scalar_type(), " differs from scores dtype ", scores.scalar_type());
  TORCH_CHECK(scores.device().is_cpu() && noise.device().is_cpu(), op,
              ": CPU kernel got tensors on ", scores.device(), " / ", noise.device());
  TORCH_CHECK(noise.size(0) == scores.size(0) && noise.size(2) == scores.size(1), op,
              ": noise shape ", noise.sizes(), " does not match scores shape ", scores.sizes());
  TORCH_CHECK(noise.size(1) >= 1, op, ": noise needs at least one sample, got S=", noise.size(1));
  TORCH_CHECK(k >= 1 && k <= scores.size(1), op, ": k must be in [1, N=", scores.size(1),
              "], got ", k);
  TORCH_CHECK(sigma > 0.0 && std::isfinite(sigma), op, ": sigma must be > 0, got ", sigma);
}

void check_mask(const c10::optional<at::Tensor>& mask, const at::Tensor& scores, const char* op) {
  if (!mask.has_value()) return;
  const at::Tensor& m = *mask;
  TORCH_CHECK(m.scalar_type() == at::kBool, op, ": mask must be bool, got ", m.scalar_type());
  TORCH_CHECK(m.device().is_cpu(), op, ": mask is on ", m.device());
  TORCH_CHECK(m.dim() == 2 && m.size(0) == scores.size(0) && m.size(1) == scores.size(1), op,
              ": mask shape ", m.sizes(), " does not match scores shape ", scores.sizes());
}

void check_indices(const at::Tensor& indices, const at::Tensor& noise, const char* op) {
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.dim() == 3 && indices.size(0) == noise.size(0) &&
                  indices.size(1) == noise.size(1),
              op, ": indices shape ", indices.sizes(), " does not match noise shape ", noise.sizes());
  TORCH_CHECK(indices.size(2) >= 1 && indices.size(2) <= noise.size(2), op,
              ": indices hold k=", indices.size(2), " positions for N=", noise.size(2));
}

// ---------------------------------------------------------------------------------------------
// selection

// Order-preserving map of a float onto uint32 (larger float -> larger key). -0.0 and +0.0 map to
// different keys; the ops treat them as different values, like a stable sort on their bit order would
// not, so zero is normalised first.
inline uint32_t float_key(float v) {
  if (v == 0.0f) v = 0.0f;
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Top-k positions of one perturbed row, sorted ascending, written to out[0..k).
// valid: the candidate positions (ascending); p: workspace of N values.
void select_row(const float* s, const float* z, float sigma, const int64_t* valid, int64_t nv,
                      int64_t k, std::vector<uint64_t>& keys, int64_t* out) {
  keys.resize(nv);
  for (int64_t j = 0; j < nv; ++j) {
    const int64_t n = valid[j];
    const float t = sigma * z[n];  // rounded product, then the sum: same as the reference
    const float p = s[n] + t;
    // high word: value, low word: ~position, so equal values prefer the lower position
    keys[j] = (static_cast<uint64_t>(float_key(p)) << 32) |
              static_cast<uint64_t>(0xFFFFFFFFu - static_cast<uint32_t>(n));
  }
  if (k < nv) {
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint64_t>());
  }
  for (int64_t i = 0; i < k; ++i) {
    out[i] = static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(keys[i] & 0xFFFFFFFFu));
  }
  std::sort(out, out + k);
}

void select_row(const double* s, const double* z, double sigma, const int64_t* valid,
                       int64_t nv, int64_t k, std::vector<std::pair<double, int64_t>>& keys,
                       int64_t* out) {
  keys.resize(nv);
  for (int64_t j = 0; j < nv; ++j) {
    const int64_t n = valid[j];
    const double t = sigma * z[n];
    keys[j] = {s[n] + t, n};
  }
  auto better = [](const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (k < nv) std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), better);
  for (int64_t i = 0; i < k; ++i) out[i] = keys[i].second;
  std::sort(out, out + k);
}

template <typename T>
struct SelectKey;
template <>
struct SelectKey<float> {
  using Buffer = std::vector<uint64_t>;
};
template <>
struct SelectKey<double> {
  using Buffer = std::vector<std::pair<double, int64_t>>;
};

// indices (B,S,k): sorted top-k positions of every perturbed row.
at::Tensor select_all(const at::Tensor& scores, const at::Tensor& noise,
                      const c10::optional<at::Tensor>& mask, int64_t k, double sigma,
                      const char* op) {
  const int64_t B = scores.size(0), N = scores.size(1), S = noise.size(1);
  // candidate positions per row
  std::vector<int64_t> valid(B * N);
  std::vector<int64_t> nvalid(B);
  const bool* mp = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    int64_t c = 0;
    for (int64_t n = 0; n < N; ++n) {
      if (mp == nullptr || mp[b * N + n]) valid[b * N + c++] = n;
    }
    nvalid[b] = c;
    TORCH_CHECK(k <= c, op, ": k=", k, " is larger than the ", c, " valid tokens of row ", b);
  }
  auto indices = at::empty({B, S, k}, scores.options().dtype(at::kLong));
  int64_t* ip = indices.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "perturbed_topk_select", [&] {
    const scalar_t* sp = scores.data_ptr<scalar_t>();
    const scalar_t* zp = noise.data_ptr<scalar_t>();
    // scores must be finite: a NaN has no place in the order
    for (int64_t j = 0; j < B * N; ++j) {
      TORCH_CHECK(std::isfinite(static_cast<double>(sp[j])), op, ": scores hold a non-finite value (",
                  static_cast<double>(sp[j]), ") at flat position ", j);
    }
    at::parallel_for(0, B * S, 1, [&](int64_t begin, int64_t end) {
      typename SelectKey<scalar_t>::Buffer keys;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / S;
        select_row(sp + b * N, zp + t * N, static_cast<scalar_t>(sigma), valid.data() + b * N,
                   nvalid[b], k, keys, ip + t * k);
      }
    });
  });
  return indices;
}

// ---------------------------------------------------------------------------------------------
// distinct (row i, position n, count c) pairs of one batch element

// Sort the S positions of row i of batch element b: pos ascending, ties by sample.
inline void sort_row(const int64_t* ib, int64_t S, int64_t k, int64_t i,
                     std::vector<std::pair<int64_t, int32_t>>& buf) {
  buf.resize(S);
  for (int64_t s = 0; s < S; ++s) buf[s] = {ib[s * k + i], static_cast<int32_t>(s)};
  std::sort(buf.begin(), buf.end());
}

template <typename T>
inline void axpy(T* __restrict__ y, const T* __restrict__ x, T a, int64_t D) {
  for (int64_t d = 0; d < D; ++d) y[d] += a * x[d];
}

template <typename T>
inline T dot(const T* __restrict__ a, const T* __restrict__ b, int64_t D) {
  // four partial sums: lets the compiler vectorise without -ffast-math, and sums in a fixed order
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) {
    s0 += a[d] * b[d];
    s1 += a[d + 1] * b[d + 1];
    s2 += a[d + 2] * b[d + 2];
    s3 += a[d + 3] * b[d + 3];
  }
  for (; d < D; ++d) s0 += a[d] * b[d];
  return (s0 + s1) + (s2 + s3);
}

// ---------------------------------------------------------------------------------------------
// fused gather: forward

std::tuple<at::Tensor, at::Tensor> gather_forward(const at::Tensor& scores_, const at::Tensor& x_,
                                                  const at::Tensor& noise_,
                                                  const c10::optional<at::Tensor>& mask_, int64_t k,
                                                  double sigma) {
  const char* op = "edgekd::perturbed_topk_gather";
  check_scores_noise(scores_, noise_, k, sigma, op);
  check_mask(mask_, scores_, op);
  TORCH_CHECK(x_.dim() == 3, op, ": x must be (B, N, D), got ", x_.dim(), " dims");
  TORCH_CHECK(x_.size(0) == scores_.size(0) && x_.size(1) == scores_.size(1), op, ": x shape ",
              x_.sizes(), " does not match scores shape ", scores_.sizes());
  TORCH_CHECK(x_.scalar_type() == scores_.scalar_type(), op, ": x dtype ", x_.scalar_type(),
              " differs from scores dtype ", scores_.scalar_type());
  TORCH_CHECK(x_.device().is_cpu(), op, ": x is on ", x_.device());
  auto scores = scores_.contiguous();
  auto noise = noise_.contiguous();
  auto x = x_.contiguous();
  c10::optional<at::Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();

  const int64_t B = scores.size(0), N = scores.size(1), S = noise.size(1), D = x.size(2);
  auto indices = select_all(scores, noise, mask, k, sigma, op);
  auto out = at::zeros({B, k, D}, x.options());
  const int64_t* ip = indices.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "perturbed_topk_gather", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op_ = out.data_ptr<scalar_t>();
    const scalar_t inv_s = scalar_t(1) / static_cast<scalar_t>(S);
    // each task owns output rows (b, i): race-free
    at::parallel_for(0, B * k, 16, [&](int64_t begin, int64_t end) {
      std::vector<std::pair<int64_t, int32_t>> buf;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / k, i = t % k;
        sort_row(ip + b * S * k, S, k, i, buf);
        scalar_t* y = op_ + t * D;
        const scalar_t* xb = xp + b * N * D;
        for (int64_t r = 0; r < S;) {
          int64_t e = r + 1;
          while (e < S && buf[e].first == buf[r].first) ++e;
          axpy(y, xb + buf[r].first * D, static_cast<scalar_t>(e - r), D);
          r = e;
        }
        for (int64_t d = 0; d < D; ++d) y[d] *= inv_s;
      }
    });
  });
  return {out, indices};
}

// ---------------------------------------------------------------------------------------------
// grad_scores[b, n] = 1/(S sigma) sum_s w[b, s] noise[b, s, n]

template <typename scalar_t>
void weights_times_noise(const std::vector<double>& w, const scalar_t* zp, int64_t B, int64_t S,
                         int64_t N, double sigma, scalar_t* gp) {
  const double scale = 1.0 / (static_cast<double>(S) * sigma);
  constexpr int64_t chunk = 256;
  const int64_t nchunks = (N + chunk - 1) / chunk;
  at::parallel_for(0, B * nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(chunk);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunks, n0 = (t % nchunks) * chunk;
      const int64_t len = std::min(chunk, N - n0);
      std::fill(acc.begin(), acc.begin() + len, 0.0);
      for (int64_t s = 0; s < S; ++s) {
        const double ws = w[b * S + s];
        const scalar_t* z = zp + (b * S + s) * N + n0;
        for (int64_t j = 0; j < len; ++j) acc[j] += ws * static_cast<double>(z[j]);
      }
      for (int64_t j = 0; j < len; ++j) gp[b * N + n0 + j] = static_cast<scalar_t>(acc[j] * scale);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// fused gather: backward

std::tuple<at::Tensor, at::Tensor> gather_backward(const at::Tensor& grad_out_, const at::Tensor& x_,
                                                   const at::Tensor& noise_,
                                                   const at::Tensor& indices_, double sigma) {
  const char* op = "edgekd::perturbed_topk_gather_backward";
  TORCH_CHECK(x_.dim() == 3, op, ": x must be (B, N, D), got ", x_.dim(), " dims");
  TORCH_CHECK(noise_.dim() == 3, op, ": noise must be (B, S, N), got ", noise_.dim(), " dims");
  check_indices(indices_, noise_, op);
  const int64_t B = x_.size(0), N = x_.size(1), D = x_.size(2);
  const int64_t S = noise_.size(1), k = indices_.size(2);
  TORCH_CHECK(noise_.size(0) == B && noise_.size(2) == N, op, ": noise shape ", noise_.sizes(),
              " does not match x shape ", x_.sizes());
  TORCH_CHECK(grad_out_.dim() == 3 && grad_out_.size(0) == B && grad_out_.size(1) == k &&
                  grad_out_.size(2) == D,
              op, ": grad_out shape ", grad_out_.sizes(), " expected (", B, ", ", k, ", ", D, ")");
  TORCH_CHECK(grad_out_.scalar_type() == x_.scalar_type() && noise_.scalar_type() == x_.scalar_type(),
              op, ": dtypes differ: grad_out ", grad_out_.scalar_type(), ", x ", x_.scalar_type(),
              ", noise ", noise_.scalar_type());
  TORCH_CHECK(sigma > 0.0, op, ": sigma must be > 0, got ", sigma);
  auto g = grad_out_.contiguous();
  auto x = x_.contiguous();
  auto noise = noise_.contiguous();
  auto indices = indices_.contiguous();
  const int64_t* ip = indices.data_ptr<int64_t>();

  auto grad_scores = at::empty({B, N}, x.options());
  auto grad_x = at::zeros({B, N, D}, x.options());

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "perturbed_topk_gather_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* zp = noise.data_ptr<scalar_t>();
    scalar_t* gsp = grad_scores.data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* ib = ip + b * S * k;
      // 1. distinct (i, n, count) pairs, <G[i], x[n]> once per pair, scattered to the samples.
      //    Rows are cut into a fixed number of blocks, each with its own partial w: the sum
      //    order does not depend on the thread count.
      const int64_t nblocks = std::min<int64_t>(k, 64);
      std::vector<double> wpart(nblocks * S, 0.0);
      std::vector<int64_t> pair_n(S * k);   // per row i: its distinct positions (first cnt[i])
      std::vector<int32_t> pair_c(S * k);   //            and their counts
      std::vector<int64_t> npairs(k);
      at::parallel_for(0, nblocks, 1, [&](int64_t bb, int64_t be) {
        std::vector<std::pair<int64_t, int32_t>> buf;
        for (int64_t blk = bb; blk < be; ++blk) {
          double* w = wpart.data() + blk * S;
          const int64_t i0 = blk * k / nblocks, i1 = (blk + 1) * k / nblocks;
          for (int64_t i = i0; i < i1; ++i) {
            sort_row(ib, S, k, i, buf);
            const scalar_t* gi = gp + (b * k + i) * D;
            int64_t np = 0;
            for (int64_t r = 0; r < S;) {
              int64_t e = r + 1;
              while (e < S && buf[e].first == buf[r].first) ++e;
              const int64_t n = buf[r].first;
              const double v = static_cast<double>(dot(gi, xp + (b * N + n) * D, D));
              for (int64_t q = r; q < e; ++q) w[buf[q].second] += v;
              pair_n[i * S + np] = n;
              pair_c[i * S + np] = static_cast<int32_t>(e - r);
              ++np;
              r = e;
            }
            npairs[i] = np;
          }
        }
      });
      std::vector<double> w(S, 0.0);
      for (int64_t blk = 0; blk < nblocks; ++blk)
        for (int64_t s = 0; s < S; ++s) w[s] += wpart[blk * S + s];
      // 2. grad_scores
      weights_times_noise<scalar_t>(w, zp + b * S * N, 1, S, N, sigma, gsp + b * N);
      // 3. grad_x: pairs bucketed by position (counting sort, ascending i inside a bucket), then
      //    each task owns a range of positions: race-free and deterministic.
      std::vector<int64_t> start(N + 1, 0);
      for (int64_t i = 0; i < k; ++i)
        for (int64_t p = 0; p < npairs[i]; ++p) ++start[pair_n[i * S + p] + 1];
      for (int64_t n = 0; n < N; ++n) start[n + 1] += start[n];
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      std::vector<int64_t> by_i(start[N]);
      std::vector<int32_t> by_c(start[N]);
      for (int64_t i = 0; i < k; ++i) {
        for (int64_t p = 0; p < npairs[i]; ++p) {
          const int64_t n = pair_n[i * S + p];
          by_i[fill[n]] = i;
          by_c[fill[n]] = pair_c[i * S + p];
          ++fill[n];
        }
      }
      const scalar_t inv_s = scalar_t(1) / static_cast<scalar_t>(S);
      at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          if (start[n] == start[n + 1]) continue;
          scalar_t* y = gxp + (b * N + n) * D;
          for (int64_t q = start[n]; q < start[n + 1]; ++q) {
            axpy(y, gp + (b * k + by_i[q]) * D, static_cast<scalar_t>(by_c[q]), D);
          }
          for (int64_t d = 0; d < D; ++d) y[d] *= inv_s;
        }
      });
    }
  });
  return {grad_scores, grad_x};
}

// ---------------------------------------------------------------------------------------------
// indicators: forward and backward

std::tuple<at::Tensor, at::Tensor> indicators_forward(const at::Tensor& scores_,
                                                      const at::Tensor& noise_,
                                                      const c10::optional<at::Tensor>& mask_,
                                                      int64_t k, double sigma) {
  const char* op = "edgekd::perturbed_topk_indicators";
  check_scores_noise(scores_, noise_, k, sigma, op);
  check_mask(mask_, scores_, op);
  auto scores = scores_.contiguous();
  auto noise = noise_.contiguous();
  c10::optional<at::Tensor> mask;
  if (mask_.has_value()) mask = mask_->contiguous();
  const int64_t B = scores.size(0), N = scores.size(1), S = noise.size(1);
  auto indices = select_all(scores, noise, mask, k, sigma, op);
  auto ind = at::zeros({B, k, N}, scores.options());
  const int64_t* ip = indices.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "perturbed_topk_indicators", [&] {
    scalar_t* yp = ind.data_ptr<scalar_t>();
    const scalar_t inv_s = scalar_t(1) / static_cast<scalar_t>(S);
    at::parallel_for(0, B * k, 16, [&](int64_t begin, int64_t end) {
      std::vector<std::pair<int64_t, int32_t>> buf;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / k, i = t % k;
        sort_row(ip + b * S * k, S, k, i, buf);
        scalar_t* y = yp + t * N;
        for (int64_t r = 0; r < S;) {
          int64_t e = r + 1;
          while (e < S && buf[e].first == buf[r].first) ++e;
          y[buf[r].first] = static_cast<scalar_t>(e - r) * inv_s;
          r = e;
        }
      }
    });
  });
  return {ind, indices};
}

at::Tensor indicators_backward(const at::Tensor& grad_ind_, const at::Tensor& noise_,
                               const at::Tensor& indices_, double sigma) {
  const char* op = "edgekd::perturbed_topk_indicators_backward";
  TORCH_CHECK(noise_.dim() == 3, op, ": noise must be (B, S, N), got ", noise_.dim(), " dims");
  check_indices(indices_, noise_, op);
  const int64_t B = noise_.size(0), S = noise_.size(1), N = noise_.size(2), k = indices_.size(2);
  TORCH_CHECK(grad_ind_.dim() == 3 && grad_ind_.size(0) == B && grad_ind_.size(1) == k &&
                  grad_ind_.size(2) == N,
              op, ": grad shape ", grad_ind_.sizes(), " expected (", B, ", ", k, ", ", N, ")");
  TORCH_CHECK(grad_ind_.scalar_type() == noise_.scalar_type(), op, ": grad dtype ",
              grad_ind_.scalar_type(), " differs from noise dtype ", noise_.scalar_type());
  TORCH_CHECK(sigma > 0.0, op, ": sigma must be > 0, got ", sigma);
  auto g = grad_ind_.contiguous();
  auto noise = noise_.contiguous();
  auto indices = indices_.contiguous();
  const int64_t* ip = indices.data_ptr<int64_t>();
  auto grad_scores = at::empty({B, N}, noise.options());
  AT_DISPATCH_FLOATING_TYPES(noise.scalar_type(), "perturbed_topk_indicators_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    // w[b, s] = <G[b], Y_s> = sum_i G[b, i, idx_s(i)]
    std::vector<double> w(B * S, 0.0);
    at::parallel_for(0, B * S, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / S;
        const int64_t* is = ip + t * k;
        const scalar_t* gb = gp + b * k * N;
        double acc = 0.0;
        for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(gb[i * N + is[i]]);
        w[t] = acc;
      }
    });
    weights_times_noise<scalar_t>(w, noise.data_ptr<scalar_t>(), B, S, N, sigma,
                                  grad_scores.data_ptr<scalar_t>());
  });
  return grad_scores;
}

}  // namespace

TORCH_LIBRARY_IMPL(edgekd, CPU, m) {
  m.impl("perturbed_topk_gather", &gather_forward);
  m.impl("perturbed_topk_gather_backward", &gather_backward);
  m.impl("perturbed_topk_indicators", &indicators_forward);
  m.impl("perturbed_topk_indicators_backward", &indicators_backward);
}
