// Benchmarks of the Eigen backend: Newton–Schulz on Moonlight's shapes (GFLOP/s, counted as the
// plain 4n²m + 2n³ per iteration so that numbers compare with PyTorch's), one full optimizer step
// over a small Moonlight-like table, and the AdamW step in GB/s at each instruction-set level
// beside a STREAM triad measured in the same run. bench/compare_ns.py runs PyTorch's NS on the
// same shapes, bench/compare_adamw.py PyTorch's fused AdamW.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <muon/backends/eigen.hpp>
#include <muon/muon.hpp>
#include <random>
#include <vector>

#include "bandwidth.hpp"
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

// Args: batch, rows, cols, symmetric products (0/1), bf16 products (0/1).
void BM_orthogonalize(benchmark::State& state) {
  const std::int64_t batch = state.range(0), rows = state.range(1), cols = state.range(2);
  const muon::NsOptions options{.symmetric_products = state.range(3) != 0};
  muon::EigenBackend cpu({.ns_precision = state.range(4) != 0 ? muon::NsPrecision::bf16 : muon::NsPrecision::fp32});
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

// bf16 products where oneDNN is built in (they run on any x86 CPU, fast only with bf16 instructions).
#ifdef MUON_HAS_ONEDNN
constexpr int kBf16Choices = 2;
#else
constexpr int kBf16Choices = 1;
#endif

void ns_shapes(benchmark::internal::Benchmark* b) {
  for (int bf16 = 0; bf16 < kBf16Choices; ++bf16) {
    for (int symmetric : {1, 0}) {
      for (const auto& [rows, cols] : {std::pair{2048, 2048}, {3072, 2048}, {576, 2048}, {4096, 512},
                                       {1408, 2048}, {2048, 1408}})
        b->Args({1, rows, cols, symmetric, bf16});
      b->Args({8, 1408, 2048, symmetric, bf16});  // 8 experts of one layer, one batched call
    }
  }
  b->ArgNames({"batch", "rows", "cols", "symmetric", "bf16"})->Unit(benchmark::kMillisecond)->UseRealTime();
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

#ifdef MUON_HAS_ONEDNN
// bf16 X·Xᵀ (n×k) with T lower tile pairs (EigenOptions::symmetric_tile_min), against T = 1,
// the whole product: which tile side is worth its smaller products. GFLOP/s counts 2n²k.
void BM_gram_bf16_tiles(benchmark::State& state) {
  const std::int64_t n = state.range(0), k = state.range(1), tiles = state.range(2);
  muon::EigenBackend cpu(
      {.ns_precision = muon::NsPrecision::bf16, .symmetric_tile_min = tiles == 1 ? n + 1 : n / tiles});
  if (cpu.gram_tiles(n) != tiles) return state.SkipWithError("the tile count is not reachable for this size");
  const auto x = random_values(static_cast<std::size_t>(n * k), 8);
  std::vector<float> c(static_cast<std::size_t>(n * n));
  for (auto _ : state) {
    cpu.gram(1.0f, {x.data(), 1, n, k}, muon::GramSide::rows, 0.0f, {c.data(), 1, n, n});
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(n * n * k) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_gram_bf16_tiles)
    ->ArgsProduct({{2048}, {2048}, {1, 2, 4}})
    ->ArgsProduct({{1408}, {2048}, {1, 2, 4}})
    ->ArgsProduct({{576, 512}, {2048}, {1, 2}})
    ->ArgNames({"n", "k", "tiles"})->Unit(benchmark::kMillisecond)->UseRealTime();
#endif

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

// AdamW moves 7 floats per element (reads W, G, m, v; writes W, m, v; each written line was read
// first, so there is no hidden write-allocate traffic). Arg: the CpuIsa level of the loops.
void BM_adamw(benchmark::State& state) {
  const auto isa = static_cast<muon::CpuIsa>(state.range(1));
  if (!muon::cpu_supports(isa)) return state.SkipWithError("this CPU does not support the level");
  const auto n = static_cast<std::size_t>(state.range(0));
  muon::EigenBackend cpu({.isa = isa});
  auto w = random_values(n, 4), g = random_values(n, 5), m = std::vector<float>(n), v = std::vector<float>(n);
  std::int64_t step = 0;
  for (auto _ : state) {
    const muon::StepValues values = muon::step_values({}, 1.0, 1.0, ++step);
    cpu.adamw(w, g, m, v, {.values = &values});
    benchmark::ClobberMemory();
  }
  state.counters["GB/s"] = benchmark::Counter(7.0 * 4.0 * static_cast<double>(n) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_adamw)->ArgsProduct({{1 << 24}, {0, 1, 2}})->ArgNames({"n", "isa"})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// The bound to compare with: a STREAM triad a = b + s·c on the same threads, counted as STREAM
// counts it (12 bytes per element). With plain stores the CPU also reads each line of `a` before
// writing it, traffic the count leaves out; non-temporal stores skip that read. Arg:
// non-temporal stores (0/1).
void BM_stream_triad(benchmark::State& state) {
  const auto n = static_cast<std::int64_t>(state.range(0));
  const bool non_temporal = state.range(1) != 0;
  const auto size = static_cast<std::size_t>(n);
  bandwidth::AlignedFloats a(size), b(size), c(size);
  std::fill_n(b.data, n, 1.0f);
  std::fill_n(c.data, n, 2.0f);
  for (auto _ : state) {
    bandwidth::triad(a.data, b.data, c.data, 3.0f, n, non_temporal);
    benchmark::ClobberMemory();
  }
  state.counters["GB/s"] = benchmark::Counter(12.0 * static_cast<double>(n) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_stream_triad)->ArgsProduct({{1 << 24}, {0, 1}})->ArgNames({"n", "non_temporal"})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// AdamW's own memory traffic without its arithmetic: the same four read streams and three
// read-modified-written ones (W += G, m += G, v += G). On a CPU whose cores reach more bandwidth
// with more streams in flight, this, not the three-stream triad, is what AdamW can reach.
void BM_adamw_traffic(benchmark::State& state) {
  const auto n = static_cast<std::int64_t>(state.range(0));
  const auto size = static_cast<std::size_t>(n);
  bandwidth::AlignedFloats w(size), m(size), v(size), g(size);
  for (auto _ : state) {
    bandwidth::adamw_traffic(w.data, m.data, v.data, g.data, n);
    benchmark::ClobberMemory();
  }
  state.counters["GB/s"] = benchmark::Counter(28.0 * static_cast<double>(n) * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_adamw_traffic)->Arg(1 << 24)->ArgName("n")->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
