// Branch-free float math shared by the CPU kernels (masked BiLSTM, attention pooling, the fused
// bilstm_attention forward).
//
// Deliberately without an include guard: each kernel file includes it (directly or through its
// *_kernels.h) twice, once inside `namespace isa_avx2` under `#pragma GCC target("avx2,fma")` and
// once inside `namespace isa_base` for any x86-64 (or other) CPU, and picks one at run time. The
// system headers it needs (<cmath>, <cstdint>, <cstring>) come before those namespaces. The loops
// vectorize only without trapping-math (the clamps' compares): the including file wraps the
// namespaces in `#pragma GCC optimize("no-trapping-math", ...)`.

// exp for float, Cephes-style (range reduction + degree-6 polynomial, ~1 ulp over the clamped
// range), branch-free so that the loops calling it vectorize. ATen's tanh measured ~12 ns/element
// on the 2-core EPYC dev machine against ~1 ns for this.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;  // plain ternaries: std::min/max would not inline under the pragma
  x = x > 88.0f ? 88.0f : x;
  const float fx = x * 1.44269504088896341f;
  // round to the nearest integer with the 1.5 * 2^23 trick (no libm call)
  const float r = (fx + 12582912.0f) - 12582912.0f;
  float z = x - r * 0.693359375f;
  z = z - r * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * z + 1.3981999507e-3f;
  p = p * z + 8.3334519073e-3f;
  p = p * z + 4.1665795894e-2f;
  p = p * z + 1.6666665459e-1f;
  p = p * z + 5.0000001201e-1f;
  const float y = p * z * z + z + 1.0f;
  const int32_t bits = (static_cast<int32_t>(r) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_f(float x) { return 1.0f - 2.0f / (1.0f + exp_approx(2.0f * x)); }
inline double sigmoid_f(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_f(double x) { return std::tanh(x); }

// x[i] = tanh(x[i]) for i < n (vectorized for float).
template <typename T>
void tanh_inplace(T* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = tanh_f(x[i]);
}

// Dot product with 8 independent partial sums: the compiler vectorizes it without -ffast-math
// (a single running sum is a serial dependency chain that it may not reorder).
template <typename T>
inline T dot_n(const T* __restrict a, const T* __restrict b, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  T s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}
