// Benchmarks of the Eigen backend: Newton–Schulz on Moonlight's shapes (GFLOP/s, counted as the
// plain 4n²m + 2n³ per iteration so that numbers compare with PyTorch's), one full optimizer step
// over a small Moonlight-like table, and the AdamW step in GB/s beside a memory-copy bandwidth
// measured in the same run. bench/compare_ns.py runs PyTorch's NS on the same shapes.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <muon/backends/eigen.hpp>
#include <muon/muon.hpp>
#include <random>
#include <vector>

#include "moonlight_table.hpp"

namespace {

std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

double ns_flops(std::int64_t batch, std::int64_t rows, std::int64_t cols, int steps) {
  const double n = static_cast<double>(std::min(rows, cols)), m = static_cast<double>(std::max(rows, cols));
  return static_cast<double>(batch) * steps * (4 * n * n * m + 2 * n * n * n);
}

// Args: batch, rows, cols, symmetric products (0/1).
void BM_orthogonalize(benchmark::State& state) {
  const std::int64_t batch = state.range(0), rows = state.range(1), cols = state.range(2);
  const muon::NsOptions options{.symmetric_products = state.range(3) != 0};
  muon::EigenBackend cpu;
  const auto input = random_values(static_cast<std::size_t>(batch * rows * cols), 1);
  auto x = input;
  const muon::MatrixStack<float> stack{x.data(), batch, rows, cols};
  muon::NsWorkspace<muon::EigenBackend> ws(cpu, stack);
  for (auto _ : state) {
    state.PauseTiming();
    std::copy(input.begin(), input.end(), x.begin());
    state.ResumeTiming();
    muon::orthogonalize(cpu, stack, options, ws);
    benchmark::DoNotOptimize(x.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(ns_flops(batch, rows, cols, options.steps) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void ns_shapes(benchmark::internal::Benchmark* b) {
  for (int symmetric : {1, 0}) {
    for (const auto& [rows, cols] : {std::pair{2048, 2048}, {3072, 2048}, {576, 2048}, {4096, 512},
                                     {1408, 2048}, {2048, 1408}})
      b->Args({1, rows, cols, symmetric});
    b->Args({8, 1408, 2048, symmetric});  // 8 experts of one layer, one batched call
  }
  b->ArgNames({"batch", "rows", "cols", "symmetric"})->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_orthogonalize)->Apply(ns_shapes);

// The backend's two heavy products on one n×n matrix: X·Xᵀ as `gram` (SYRK, then mirrored)
// against the same result as a GEMM. GFLOP/s counts 2n³ for both.
void BM_gram_vs_gemm(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const bool symmetric = state.range(1) != 0;
  muon::EigenBackend cpu;
  const auto x = random_values(static_cast<std::size_t>(n * n), 7);
  std::vector<float> c(static_cast<std::size_t>(n * n));
  const muon::MatrixStack<const float> in{x.data(), 1, n, n};
  const muon::MatrixStack<float> out{c.data(), 1, n, n};
  for (auto _ : state) {
    if (symmetric)
      cpu.gram(1.0f, in, muon::GramSide::rows, 0.0f, out);
    else
      cpu.gemm(1.0f, in, muon::Transpose::no, in, muon::Transpose::yes, 0.0f, out);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(n * n * n) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_gram_vs_gemm)->Args({2048, 1})->Args({2048, 0})->ArgNames({"n", "symmetric"})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// One full step over a Moonlight-shaped table at 1/8 width (moonlight_table.hpp).
void BM_optimizer_step(benchmark::State& state) {
  std::vector<std::vector<float>> values, grads;
  std::vector<muon::Parameter> params;
  for (const auto& t : muon::bench::moonlight_table()) {
    values.push_back(random_values(static_cast<std::size_t>(muon::numel(t.shape)), 2));
    grads.push_back(random_values(static_cast<std::size_t>(muon::numel(t.shape)), 3));
    params.push_back({t.name, t.role, {values.back().data(), t.shape}, {grads.back().data(), t.shape}});
  }
  muon::Optimizer<muon::EigenBackend> opt(params, {.lr = 1e-4});
  for (auto _ : state) benchmark::DoNotOptimize(opt.step());
}
BENCHMARK(BM_optimizer_step)->Unit(benchmark::kMillisecond)->UseRealTime();

// AdamW moves 7 floats per element (reads W, G, m, v; writes W, m, v).
void BM_adamw(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  muon::EigenBackend cpu;
  auto w = random_values(n, 4), g = random_values(n, 5), m = std::vector<float>(n), v = std::vector<float>(n);
  std::int64_t step = 0;
  for (auto _ : state) {
    cpu.adamw(w, g, m, v, {.step = ++step});
    benchmark::ClobberMemory();
  }
  state.counters["GB/s"] = benchmark::Counter(7.0 * 4.0 * static_cast<double>(n) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_adamw)->Arg(1 << 24)->Unit(benchmark::kMillisecond)->UseRealTime();

// The bandwidth to compare with: a copy reads and writes 4 bytes per element (8 in all), with
// the same threads as the backend's elementwise loops.
void BM_memory_copy(benchmark::State& state) {
  const auto n = static_cast<std::int64_t>(state.range(0));
  const auto src = random_values(static_cast<std::size_t>(n), 6);
  std::vector<float> dst(static_cast<std::size_t>(n));
  for (auto _ : state) {
    const float* s = src.data();
    float* d = dst.data();
#pragma omp parallel for simd
    for (std::int64_t i = 0; i < n; ++i) d[i] = s[i];
    benchmark::ClobberMemory();
  }
  state.counters["GB/s"] = benchmark::Counter(8.0 * static_cast<double>(n) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_memory_copy)->Arg(1 << 24)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
