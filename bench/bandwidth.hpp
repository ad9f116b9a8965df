// bench/bandwidth.hpp: the memory-bandwidth kernels the AdamW figures are compared with
// (bench_optimizer's BM_stream_triad and BM_adamw_traffic, and the ctypes entry point that
// bench/compare_adamw.py alternates with AdamW).
//
// They run at the widest level this CPU has, as the library's loops do: compiled for the
// baseline, their SSE2 loads and stores, not the memory, were the limit (a plain-add loop with
// AdamW's streams took 1.5× AdamW's own time at AVX-512), and on each OpenMP thread's contiguous
// share of 64-byte aligned arrays.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <muon/cpu/isa.hpp>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace bandwidth {

namespace level {
// The plain loops, written once; each level's function below inlines them under its own target.
[[gnu::always_inline]] inline void triad_loop(float* a, const float* b, const float* c, float s, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

// AdamW's loads and stores (W, G, m, v in; W, m, v out) without its arithmetic.
[[gnu::always_inline]] inline void adamw_traffic_loop(float* w, float* m, float* v, const float* g, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    w[i] += g[i];
    m[i] += g[i];
    v[i] += g[i];
  }
}

// a = b + s·c; with non-temporal stores `a` is written without being read first.
inline void triad(float* a, const float* b, const float* c, float s, std::int64_t n, bool non_temporal) {
  if (!non_temporal) return triad_loop(a, b, c, s, n);
  for (std::int64_t i = 0; i < n; i += 4)  // n a multiple of 16, `a` 64-byte aligned
    _mm_stream_ps(a + i, _mm_add_ps(_mm_load_ps(b + i), _mm_mul_ps(_mm_set1_ps(s), _mm_load_ps(c + i))));
}
inline void adamw_traffic(float* w, float* m, float* v, const float* g, std::int64_t n) {
  adamw_traffic_loop(w, m, v, g, n);
}

#if MUON_X86_DISPATCH
MUON_BEGIN_TARGET(MUON_TARGET_AVX512)
inline void triad_avx512(float* a, const float* b, const float* c, float s, std::int64_t n, bool non_temporal) {
  if (!non_temporal) return triad_loop(a, b, c, s, n);
  for (std::int64_t i = 0; i < n; i += 16)
    _mm512_stream_ps(a + i,
                     _mm512_add_ps(_mm512_loadu_ps(b + i), _mm512_mul_ps(_mm512_set1_ps(s), _mm512_loadu_ps(c + i))));
}
inline void adamw_traffic_avx512(float* w, float* m, float* v, const float* g, std::int64_t n) {
  adamw_traffic_loop(w, m, v, g, n);
}
MUON_END_TARGET()
#endif
}  // namespace level

// Runs fn(begin, count) on each OpenMP thread's contiguous share, in multiples of 16 elements.
template <class Fn>
void per_thread(std::int64_t n, Fn fn) {
#pragma omp parallel
  {
#ifdef _OPENMP
    const std::int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
#else
    const std::int64_t t = 0, threads = 1;
#endif
    const std::int64_t share = (n / 16 + threads - 1) / threads * 16;
    const std::int64_t begin = std::min(n, t * share), end = std::min(n, begin + share);
    fn(begin, end - begin);
  }
}

inline void triad(float* a, const float* b, const float* c, float s, std::int64_t n, bool non_temporal) {
  [[maybe_unused]] static const bool wide = muon::cpu_supports(muon::CpuIsa::avx512);
  per_thread(n, [&](std::int64_t begin, std::int64_t count) {
#if MUON_X86_DISPATCH
    if (wide) return level::triad_avx512(a + begin, b + begin, c + begin, s, count, non_temporal);
#endif
    level::triad(a + begin, b + begin, c + begin, s, count, non_temporal);
  });
  _mm_sfence();
}

inline void adamw_traffic(float* w, float* m, float* v, const float* g, std::int64_t n) {
  [[maybe_unused]] static const bool wide = muon::cpu_supports(muon::CpuIsa::avx512);
  per_thread(n, [&](std::int64_t begin, std::int64_t count) {
#if MUON_X86_DISPATCH
    if (wide) return level::adamw_traffic_avx512(w + begin, m + begin, v + begin, g + begin, count);
#endif
    level::adamw_traffic(w + begin, m + begin, v + begin, g + begin, count);
  });
}

// 64-byte aligned floats, zero-filled.
struct AlignedFloats {
  explicit AlignedFloats(std::size_t n) : storage(n + 16) {
    data = storage.data() + (16 - reinterpret_cast<std::uintptr_t>(storage.data()) / 4 % 16) % 16;
  }
  std::vector<float> storage;
  float* data;
};

}  // namespace bandwidth
