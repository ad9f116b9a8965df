// The routed experts' products in a prefill, one core: a few tokens times a cold 128 × 512 expert
// weight (1024 different weights, 256 MB, so each one comes from memory), by the Moonlight layers'
// few_rows_product (moonlight/layers/kernels.hpp) at the widest level the CPU runs and, in the
// same run, by the BLAS that linear() calls for more rows (muon/cpu/blas.hpp: OpenBLAS). Reported
// in GFLOP/s; docs/performance.md has the table.
//
//   OMP_NUM_THREADS=1 build/release/bench/bench_layer_kernels
//   MUON_MAX_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell OMP_NUM_THREADS=1 build/release/bench/bench_layer_kernels
#include <benchmark/benchmark.h>

#include <cstdint>
#include <moonlight/layers/kernels.hpp>
#include <muon/cpu/blas.hpp>
#include <vector>

namespace {

constexpr std::int64_t kOut = 128, kIn = 512, kWeights = 1024;  // an expert's gate_proj, 256 KiB each

const std::vector<float>& weights() {
  static const std::vector<float> w = [] {
    std::vector<float> v(static_cast<std::size_t>(kWeights * kOut * kIn));
    std::uint32_t state = 12345;
    for (float& x : v) x = static_cast<float>((state = state * 1664525u + 1013904223u) >> 8) * 0x1p-24f - 0.5f;
    return v;
  }();
  return w;
}

// y = x·Wᵀ for `rows` tokens, each iteration against the next weight.
template <bool few_rows>
void BM_expert_product(benchmark::State& state) {
  const std::int64_t rows = state.range(0);
  const std::vector<float>& w = weights();
  std::vector<float> x(static_cast<std::size_t>(rows * kIn), 0.01f), y(static_cast<std::size_t>(rows * kOut));
  const moonlight::layers::LayerKernels& k = moonlight::layers::layer_kernels();
  std::int64_t next = 0;
  for (auto _ : state) {
    const float* wi = w.data() + (next++ % kWeights) * kOut * kIn;
    if constexpr (few_rows)
      k.few_rows_product(x.data(), rows, kIn, wi, kOut, y.data());
    else
      muon::cpu::gemm(muon::Transpose::no, muon::Transpose::yes, rows, kOut, kIn, 1.0f, x.data(), kIn, wi, kIn, 0.0f,
                      y.data(), kOut);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(rows * kOut * kIn) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_expert_product<true>)->Name("few_rows_product")->Arg(12)->Arg(16)->Arg(32)->Arg(64)->Arg(128);
BENCHMARK(BM_expert_product<false>)->Name("blas")->Arg(12)->Arg(16)->Arg(32)->Arg(64)->Arg(128);

BENCHMARK_MAIN();
