// Moonlight training throughput on the CPU: one optimizer step of the tiny run config
// (examples/moonlight/configs/tiny.json: 6.9M parameters, 16 experts top-4, micro-batch 8 × 128
// tokens) through moonlight::Trainer, with muon (Muon + AdamW) and with AdamW alone. Counters:
// tokens/s, and the optimizer's share of the step. Data: pseudo-random token ids made in memory.
// bench/compare_train.py runs transformers + torch.optim on the same config and prints ratios.
//
//   OMP_NUM_THREADS=2 build/release/bench/bench_train
#include <benchmark/benchmark.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <unistd.h>

#include <moonlight/corpus.hpp>
#include <moonlight/train_options.hpp>
#include <moonlight/trainer.hpp>
#include <muon/distributed/self.hpp>

namespace {

using Trainer = moonlight::Trainer<muon::distributed::SelfCommunicator>;

moonlight::PackedSequences random_tokens(std::int64_t seq_len, std::int64_t sequences) {
  moonlight::TokenStream s;
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  for (std::int64_t i = 0; i < seq_len * sequences + 1; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift64
    s.tokens.push_back(static_cast<std::int32_t>(x % 8192));
  }
  s.source = "random";
  return {std::move(s), seq_len, 0.0};
}

void BM_train_step(benchmark::State& state, moonlight::OptimizerSplit optimizer) {
  moonlight::RunConfig run = moonlight::load_run_config(MOONLIGHT_TINY_CONFIG);
  run.training.optimizer = optimizer;
  run.training.steps = 1000000;  // the schedule never ends during the benchmark
  const moonlight::PackedSequences data = random_tokens(run.training.seq_len, 512);
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("bench_train_" + std::to_string(::getpid()));
  auto trainer = std::make_unique<Trainer>(run, data, MOONLIGHT_TOKENIZER, dir, muon::distributed::SelfCommunicator{});
  for (int i = 0; i < 2; ++i) (void)trainer->train_step();  // warm-up: first-touch of state and buffers
  double step_s = 0.0, optimizer_s = 0.0, tokens = 0.0;
  for (auto _ : state) {
    const moonlight::StepMetrics m = trainer->train_step();
    state.SetIterationTime(m.step_seconds);
    step_s += m.step_seconds;
    optimizer_s += m.optimizer_seconds;
    tokens += static_cast<double>(trainer->tokens_per_step());
  }
  state.counters["tokens_per_s"] = tokens / step_s;
  state.counters["optimizer_share"] = optimizer_s / step_s;
  state.counters["fwd_bwd_ms"] = 1e3 * (step_s - optimizer_s) / static_cast<double>(state.iterations());
  state.counters["optimizer_ms"] = 1e3 * optimizer_s / static_cast<double>(state.iterations());
  trainer.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace

BENCHMARK_CAPTURE(BM_train_step, muon, moonlight::OptimizerSplit::muon)->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(10.0);
BENCHMARK_CAPTURE(BM_train_step, adamw, moonlight::OptimizerSplit::adamw)->UseManualTime()->Unit(benchmark::kMillisecond)->MinTime(10.0);

BENCHMARK_MAIN();
