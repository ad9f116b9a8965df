// muon/cpu/elementwise.hpp: the CPU backend's elementwise loops, one source each, compiled for
// every level of cpu/isa.hpp and chosen at run time.
//
// Each loop is written once (cpu/elementwise_loops.inc), over a GCC/Clang vector type, and
// included three times, each time under another `#pragma GCC target` and lane count: SSE2 (4
// lanes), AVX2 + FMA (8) and AVX-512 (16). Vector types make the width explicit, so the loops
// vectorise at -O2 and -O3 alike. The one intrinsic is the lane-wise square root: GCC does not
// vectorise std::sqrt unless the whole translation unit is built with -fno-math-errno (not even
// with an optimize attribute), and a scalar sqrt held AdamW to 7.5 GB/s (docs/performance.md).
//
// Determinism: partial vectors (up to the first aligned element, and the last one) are computed
// by the same vector code on zero-padded copies, so an element's result does not depend on where
// a range starts or ends or how it is aligned (ZeRO-1's shards and the thread split see the same
// bits as one whole loop). `sum_squares` runs its lanes from the range's start, whatever the
// alignment, and the backend adds fixed blocks in a fixed order, whatever the thread count.
// Between levels, results may differ in the last bits (FMA contraction, lane count of the sums).
//
//   const muon::cpu::ElementwiseKernels& k = muon::cpu::elementwise_kernels(muon::detected_cpu_isa());
//   k.axpby(2.0f, x, 1.0f, y, n);
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "muon/cpu/isa.hpp"

#if MUON_X86_DISPATCH
#include <immintrin.h>
#endif

namespace muon::cpu {

// AdamW's per-step numbers, folded on the host (torch's single-tensor order):
// W ← W·decay − step_size · m / (√v / bc2_sqrt + ε).
struct AdamWFactors {
  float beta1, beta2, eps, step_size, decay, bc2_sqrt, grad_scale;
};

// Momentum: M ← μ·M + gain·G', U ← gain·G' + μ·M (Nesterov) or M, with G' = grad_scale·G.
struct MomentumFactors {
  float mu, gain, grad_scale;
  bool nesterov;
};

// One set of loops compiled for one level. Ranges are [0, n); callers split across threads.
struct ElementwiseKernels {
  CpuIsa isa;
  void (*adamw)(float* w, const float* g, float* m, float* v, std::int64_t n, const AdamWFactors& f);
  void (*momentum)(float* m, const float* g, float* u, std::int64_t n, const MomentumFactors& f);
  // y = α·x + β·y; with β = 0, y is not read.
  void (*axpby)(float alpha, const float* x, float beta, float* y, std::int64_t n);
  void (*scale)(float* x, std::int64_t n, float s);
  // Σ x² in double over one block; callers add blocks in order.
  double (*sum_squares)(const float* x, std::int64_t n);
  // bf16 bit patterns of x, rounded to nearest even (the operands of bf16 products).
  void (*to_bf16)(const float* x, std::uint16_t* y, std::int64_t n);
  // Copies the strictly lower triangle of rows [row_begin, row_end) of a row-major n×n matrix
  // onto the upper one; row_begin a multiple of 16.
  void (*mirror_lower)(float* c, std::int64_t n, std::int64_t row_begin, std::int64_t row_end);
};

namespace detail {

// One inclusion of the loops per level.
#define MUON_LEVEL baseline
#define MUON_LANES 4
#include "muon/cpu/elementwise_loops.inc"
#undef MUON_LEVEL
#undef MUON_LANES

#if MUON_X86_DISPATCH
MUON_BEGIN_TARGET(MUON_TARGET_AVX2)
#define MUON_LEVEL avx2
#define MUON_LANES 8
#include "muon/cpu/elementwise_loops.inc"
#undef MUON_LEVEL
#undef MUON_LANES
MUON_END_TARGET()

MUON_BEGIN_TARGET(MUON_TARGET_AVX512)
#define MUON_LEVEL avx512
#define MUON_LANES 16
#include "muon/cpu/elementwise_loops.inc"
#undef MUON_LEVEL
#undef MUON_LANES
MUON_END_TARGET()
#endif

}  // namespace detail

// The loops compiled for `isa`; `isa` must be one this CPU supports (cpu_supports).
[[nodiscard]] inline const ElementwiseKernels& elementwise_kernels(CpuIsa isa) {
#if MUON_X86_DISPATCH
  if (isa == CpuIsa::avx512) return detail::avx512::kernels;
  if (isa == CpuIsa::avx2) return detail::avx2::kernels;
#endif
  return detail::baseline::kernels;
}

}  // namespace muon::cpu
