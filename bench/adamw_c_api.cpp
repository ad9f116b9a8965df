// A C entry point to the CPU backend's AdamW, for bench/compare_adamw.py: it calls this through
// ctypes on torch tensors' own memory and alternates it step by step with
// torch.optim.AdamW(fused=True) in one process, so both see the same memory and the same moments
// of a noisy machine.
#include <cstdint>
#include <muon/backends/eigen.hpp>
#include <muon/step_driver.hpp>

#include "bandwidth.hpp"

extern "C" {

// One AdamW step (β = 0.9, 0.95, ε = 1e-8) at the given instruction-set level (muon::CpuIsa);
// returns 0, or 1 if this CPU does not support the level.
int muon_bench_adamw(float* w, const float* g, float* m, float* v, std::int64_t n, std::int64_t step, float lr,
                     float weight_decay, int isa) {
  const auto level = static_cast<muon::CpuIsa>(isa);
  if (!muon::cpu_supports(level)) return 1;
  const auto size = static_cast<std::size_t>(n);
  muon::EigenBackend backend({.isa = level, .ns_precision = muon::NsPrecision::fp32});
  const muon::StepValues values = muon::step_values({.lr = lr, .weight_decay = weight_decay}, 1.0, 1.0, step);
  backend.adamw({w, size}, {g, size}, {m, size}, {v, size}, {.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .values = &values});
  return 0;
}

// The bound: AdamW's loads and stores without its arithmetic (bench/bandwidth.hpp).
void muon_bench_adamw_traffic(float* w, const float* g, float* m, float* v, std::int64_t n) {
  bandwidth::adamw_traffic(w, m, v, g, n);
}
}
