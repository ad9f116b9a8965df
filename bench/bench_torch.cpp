// The LibTorch adapter's overhead: one optimizer step over the same Moonlight-shaped table
// (moonlight_table.hpp) through muon::libtorch::Muon (on CPU float32 tensors it runs the Eigen
// backend; forced onto its LibTorch-ops fallback, TorchBackend, in the third case) and through
// the core's Eigen backend, in the same run. The first benchmark of a process runs slowly for its
// first seconds, whichever it is (docs/performance.md): compare them with
//   bench_torch --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//               --benchmark_enable_random_interleaving=true   (one line)
#include <benchmark/benchmark.h>

#include <muon/backends/eigen.hpp>
#include <muon/libtorch/muon.hpp>

#include "moonlight_table.hpp"

namespace {

void step_adapter(benchmark::State& state, muon::libtorch::EngineOptions engine) {
  ::torch::manual_seed(1);
  std::vector<::torch::Tensor> muon_params, adamw_params;
  for (const auto& t : muon::bench::moonlight_table()) {
    auto p = ::torch::randn(t.shape);
    p.mutable_grad() = ::torch::randn(t.shape);
    (t.role == muon::Role::matrix ? muon_params : adamw_params).push_back(p);
  }
  std::vector<::torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(muon_params, std::make_unique<muon::libtorch::MuonOptions>(muon::libtorch::MuonOptions(1e-4)));
  groups.emplace_back(adamw_params,
                      std::make_unique<muon::libtorch::MuonOptions>(muon::libtorch::MuonOptions(1e-4).role(muon::Rule::adamw)));
  muon::libtorch::Muon opt(std::move(groups), {}, engine);
  // The adapter builds its state at the first step; the core's constructor, outside the loop too.
  opt.step();
  for (auto _ : state) benchmark::DoNotOptimize(opt.step());
}
void BM_step_torch_adapter(benchmark::State& state) { step_adapter(state, {}); }
BENCHMARK(BM_step_torch_adapter)->Unit(benchmark::kMillisecond)->UseRealTime();
void BM_step_torch_adapter_torch_ops(benchmark::State& state) {
  step_adapter(state, {.engine = muon::libtorch::Engine::torch});
}
BENCHMARK(BM_step_torch_adapter_torch_ops)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_step_eigen_core(benchmark::State& state) {
  ::torch::manual_seed(1);
  std::vector<::torch::Tensor> values, grads;
  std::vector<muon::Parameter> params;
  for (const auto& t : muon::bench::moonlight_table()) {
    values.push_back(::torch::randn(t.shape));
    grads.push_back(::torch::randn(t.shape));
    params.push_back({t.name, t.role, {values.back().data_ptr<float>(), t.shape}, {grads.back().data_ptr<float>(), t.shape}});
  }
  muon::Optimizer<muon::EigenBackend> opt(params, {.lr = 1e-4});
  for (auto _ : state) benchmark::DoNotOptimize(opt.step());
}
BENCHMARK(BM_step_eigen_core)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
