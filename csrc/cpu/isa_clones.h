// Compiles the header named by EDGEKD_ISA_KERNELS twice: inside `namespace isa_base` for any CPU
// and, on x86-64 with GCC/Clang, inside `namespace isa_avx2` for AVX2 + FMA; edgekd_use_avx2()
// says at run time which one this CPU can run. The extension itself is built for the baseline ISA.
//
// Usage (after the system headers the kernels need, outside any namespace):
//   #define EDGEKD_ISA_KERNELS "masked_bilstm_kernels.h"
//   #include "isa_clones.h"
// no-trapping-math lets the compiler if-convert the clamps of exp_approx (vec_math.h), which it
// needs to vectorize the activation loops. Included once per translation unit.
#ifndef EDGEKD_ISA_KERNELS
#error "define EDGEKD_ISA_KERNELS (the kernels header to clone) before including isa_clones.h"
#endif

#pragma GCC push_options
#pragma GCC optimize("no-trapping-math", "no-math-errno", "fp-contract=fast")
namespace isa_base {
#include EDGEKD_ISA_KERNELS
}  // namespace isa_base
#if defined(__x86_64__) && defined(__GNUC__)
#define EDGEKD_HAVE_AVX2_CLONE 1
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#include EDGEKD_ISA_KERNELS
}  // namespace isa_avx2
#endif
#pragma GCC pop_options

// True when the CPU runs the isa_avx2 clone (checked once).
inline bool edgekd_use_avx2() {
#ifdef EDGEKD_HAVE_AVX2_CLONE
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2;
#else
  return false;
#endif
}
