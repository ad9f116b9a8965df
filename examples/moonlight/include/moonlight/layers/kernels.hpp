// moonlight/layers/kernels.hpp: the layers' own fp32 loops: the SwiGLU gate and its backward, the
// softmax's exponentials, and products of a few rows against a weight. Each is compiled for every
// level of muon/cpu/isa.hpp and chosen at run time, as muon's own loops are
// (muon/cpu/elementwise.hpp).
//
// The example is compiled for the baseline ISA, as a user's program usually is, and there GCC
// calls the scalar std::exp once per element: the cross-entropy over the vocabulary and the
// SwiGLU gates took ~12% of a training step; and OpenBLAS packs a whole expert weight to multiply
// it by a dozen tokens (docs/performance.md). Each loop is written once (layers/kernels.inc) on
// muon's vector types and included once per level.
//
// Results differ from std::exp's and between levels in the last bits (lane_exp is within 1.003 ulp
// of the exact e^x); sums run their lanes from the range's start, so they depend on the data and
// the level only, never on where a row happens to be allocated.
//
//   const moonlight::layers::LayerKernels& k = moonlight::layers::layer_kernels();
//   k.silu_mul(g, u, a, n);
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "muon/cpu/elementwise.hpp"

namespace moonlight::layers {

struct LayerKernels {
  // a = silu(g) ⊙ u, silu(z) = z·σ(z).
  void (*silu_mul)(const float* g, const float* u, float* a, std::int64_t n);
  // The backward of silu_mul: dg = da ⊙ u ⊙ silu'(g), du = da ⊙ silu(g).
  void (*silu_mul_backward)(const float* g, const float* u, const float* da, float* dg, float* du, std::int64_t n);
  // The largest element of x[0, n), ignoring NaNs (−inf if there is none).
  float (*max)(const float* x, std::int64_t n);
  // x ← e^(x − shift) over [0, n); returns the sum of the new values.
  float (*exp_sum)(float* x, std::int64_t n, float shift);
  // y[m, n] = x[m, k]·w[n, k]ᵀ (row-major, dense) for a few rows m: the routed experts' products
  // in a prefill, a dozen tokens against a cold weight. Each y element sums over k in order.
  void (*few_rows_product)(const float* x, std::int64_t m, std::int64_t k, const float* w, std::int64_t n, float* y);
  // The most rows m for which few_rows_product beats the BLAS (0: none).
  std::int64_t few_rows;
};

namespace detail {

#define MOONLIGHT_LEVEL baseline
#define MOONLIGHT_LANES 4
#include "moonlight/layers/kernels.inc"
#undef MOONLIGHT_LEVEL
#undef MOONLIGHT_LANES

#if MUON_X86_DISPATCH
MUON_BEGIN_TARGET(MUON_TARGET_AVX2)
#define MOONLIGHT_LEVEL avx2
#define MOONLIGHT_LANES 8
#include "moonlight/layers/kernels.inc"
#undef MOONLIGHT_LEVEL
#undef MOONLIGHT_LANES
MUON_END_TARGET()

MUON_BEGIN_TARGET(MUON_TARGET_AVX512)
#define MOONLIGHT_LEVEL avx512
#define MOONLIGHT_LANES 16
#include "moonlight/layers/kernels.inc"
#undef MOONLIGHT_LEVEL
#undef MOONLIGHT_LANES
MUON_END_TARGET()
#endif

}  // namespace detail

// The loops of `isa`, which this CPU must support; by default the widest it does (within
// MUON_MAX_CPU_ISA), the level muon's own loops run at.
[[nodiscard]] inline const LayerKernels& layer_kernels(muon::CpuIsa isa = muon::detected_cpu_isa()) {
#if MUON_X86_DISPATCH
  if (isa == muon::CpuIsa::avx512) return detail::avx512::kernels;
  if (isa == muon::CpuIsa::avx2) return detail::avx2::kernels;
#endif
  return detail::baseline::kernels;
}

}  // namespace moonlight::layers
