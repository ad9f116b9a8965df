// muon/cpu/isa.hpp: which x86 instruction sets the CPU backend's own loops are compiled for, and
// which one this CPU runs.
//
// The library is header-only and built with the user's flags, which are usually the baseline
// x86-64 ISA (SSE2). So the hot loops are compiled several times from one source, each copy for
// one target (cpu/elementwise.hpp), and the best one the CPU supports is chosen at run time, the
// way PyTorch and OpenBLAS dispatch their kernels. The levels are the x86-64 micro-architecture
// levels: v1 (baseline), v3 (AVX2 + FMA), v4 (AVX-512 F/BW/DQ/VL).
//
//   muon::CpuIsa isa = muon::detected_cpu_isa();   // avx512 on a Zen 4 or a Skylake-X
//   muon::EigenBackend pinned({.isa = muon::CpuIsa::baseline});
//   MUON_MAX_CPU_ISA=avx2 ./train                   # caps the dispatch, like ONEDNN_MAX_CPU_ISA
#pragma once

#include <array>
#include <cstdlib>
#include <string>
#include <string_view>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "muon/error.hpp"

namespace muon {

enum class CpuIsa { baseline, avx2, avx512 };

inline constexpr std::array kAllCpuIsas{CpuIsa::baseline, CpuIsa::avx2, CpuIsa::avx512};

[[nodiscard]] constexpr std::string_view to_string(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx2: return "avx2";
    case CpuIsa::avx512: return "avx512";
    default: return "baseline";
  }
}

// The compiler target strings of the non-baseline levels (x86-64-v3 and x86-64-v4), and a
// region of code compiled for one of them (GCC's target pragma; Clang's attribute pragma).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MUON_X86_DISPATCH 1
// Exactly the features cpu_supports checks: a feature in the string but not in the check would
// let the compiler emit instructions a CPU of that level might lack.
#define MUON_TARGET_AVX2 "avx2,fma"
#define MUON_TARGET_AVX512 "avx512f,avx512bw,avx512dq,avx512vl," MUON_TARGET_AVX2
#define MUON_PRAGMA(text) _Pragma(#text)
#if defined(__clang__)
#define MUON_BEGIN_TARGET(isa) MUON_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define MUON_END_TARGET() MUON_PRAGMA(clang attribute pop)
#else
#define MUON_BEGIN_TARGET(isa) MUON_PRAGMA(GCC push_options) MUON_PRAGMA(GCC target(isa))
#define MUON_END_TARGET() MUON_PRAGMA(GCC pop_options)
#endif
#else
#define MUON_X86_DISPATCH 0
#endif

namespace detail {

// The highest level the environment allows: MUON_MAX_CPU_ISA=baseline|avx2|avx512 caps the
// dispatch (as ONEDNN_MAX_CPU_ISA caps oneDNN's), to reproduce another machine's bits or to test
// the narrower builds; unset, no cap.
[[nodiscard]] inline CpuIsa isa_cap() {
  static const CpuIsa cap = [] {
    const char* value = std::getenv("MUON_MAX_CPU_ISA");
    if (value == nullptr || *value == '\0') return CpuIsa::avx512;
    for (const CpuIsa isa : kAllCpuIsas)
      if (to_string(isa) == value) return isa;
    throw InvalidArgument(std::string("MUON_MAX_CPU_ISA is '") + value +
                          "'; use baseline, avx2 or avx512, or unset it");
  }();
  return cap;
}

}  // namespace detail

// Whether this CPU (and its operating system, which must save the wider registers) runs `isa`,
// and MUON_MAX_CPU_ISA allows it.
[[nodiscard]] inline bool cpu_supports(CpuIsa isa) {
  if (static_cast<int>(isa) > static_cast<int>(detail::isa_cap())) return false;
#if MUON_X86_DISPATCH
  switch (isa) {
    case CpuIsa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::avx512:
      return cpu_supports(CpuIsa::avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    default: return true;
  }
#else
  return isa == CpuIsa::baseline;
#endif
}

// The widest level this CPU runs (within MUON_MAX_CPU_ISA); computed once.
[[nodiscard]] inline CpuIsa detected_cpu_isa() {
  static const CpuIsa best = [] {
    for (auto it = kAllCpuIsas.rbegin(); it != kAllCpuIsas.rend(); ++it)
      if (cpu_supports(*it)) return *it;
    return CpuIsa::baseline;
  }();
  return best;
}

// Whether the CPU multiplies bf16 in hardware: AVX512_BF16 (Zen 4, Cooper Lake and later) or
// AMX-BF16 (Sapphire Rapids and later); false under MUON_MAX_CPU_ISA below avx512. Without
// either, bf16 products are emulated and slower than fp32 ones, so the automatic Newton–Schulz
// precision stays fp32.
[[nodiscard]] inline bool cpu_has_bf16_instructions() {
#if MUON_X86_DISPATCH
  // CPUID leaf 7: sub-leaf 1 EAX bit 5 is AVX512_BF16, sub-leaf 0 EDX bit 22 is AMX-BF16 (the
  // compilers' __builtin_cpu_supports names differ between versions, cpuid does not).
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!cpu_supports(CpuIsa::avx512) || __get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 1, a, b, c, d);
  const bool avx512_bf16 = (a >> 5) & 1u;
  __cpuid_count(7, 0, a, b, c, d);
  const bool amx_bf16 = (d >> 22) & 1u;
  return avx512_bf16 || amx_bf16;
#else
  return false;
#endif
}

}  // namespace muon
