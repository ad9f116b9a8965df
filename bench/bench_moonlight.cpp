// Moonlight forward-pass throughput on the CPU: prefill (one decompressed pass over a prompt) and
// decode (one token at a time on the absorbed latent KV cache), in tokens/s, for a Moonlight-shaped
// model of about 106M parameters with random weights made in memory (no files). The shape keeps
// Moonlight's structure and ratios (64 experts, top-6, 2 shared, first layer dense, q_lora_rank
// null, rope 1/3 of the qk head) at hidden 512. bench/compare_moonlight.py runs transformers on
// the same config and thread count and prints the ratios.
//
//   OMP_NUM_THREADS=2 build/release/bench/bench_moonlight
//
// With MOONLIGHT_CHECKPOINT=DIR (a Hugging Face checkpoint directory, e.g. one `moonlight init`
// wrote), BM_checkpoint_* measure that model read in place (Model::map, as generate and chat
// read it): the load time, the resident memory, and prefill and decode on a shorter prompt. One
// iteration each: on a model larger than the machine's memory one pass reads most of the file.
//
//   MOONLIGHT_CHECKPOINT=DIR OMP_NUM_THREADS=2 build/release/bench/bench_moonlight --benchmark_filter=checkpoint
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <moonlight/model.hpp>
#include <moonlight/parameter_count.hpp>
#include <string>
#include <vector>

namespace {

// Keep in sync with bench/compare_moonlight.py.
const char* const kConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 16384, "hidden_size": 512, "intermediate_size": 2816,
  "moe_intermediate_size": 128, "num_hidden_layers": 7, "num_attention_heads": 8, "num_key_value_heads": 8,
  "n_routed_experts": 64, "num_experts_per_tok": 6, "n_shared_experts": 2, "n_group": 1, "topk_group": 1,
  "first_k_dense_replace": 1, "moe_layer_freq": 1, "kv_lora_rank": 256, "q_lora_rank": null,
  "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64, "max_position_embeddings": 4096,
  "routed_scaling_factor": 2.446, "norm_topk_prob": true, "rms_norm_eps": 1e-5, "rope_theta": 50000.0,
  "scoring_func": "sigmoid", "topk_method": "noaux_tc", "hidden_act": "silu", "tie_word_embeddings": false
})";
constexpr std::int64_t kPrompt = 128;   // prefill length, and the context decode starts from
constexpr std::int64_t kDecode = 32;    // tokens decoded per decode iteration

const moonlight::Model& model() {
  static const moonlight::Model m = [] {
    const moonlight::Config config = moonlight::Config::from_json(nlohmann::json::parse(kConfig));
    moonlight::Weights w(config);
    std::uint64_t state = 0x9e3779b97f4a7c15ull;
    for (const auto& t : w.tensors()) {
      const bool norm = t.role == muon::Role::norm;
      for (float& v : w.values(t.name)) {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;  // xorshift64
        const float uniform = static_cast<float>(state >> 40) * 0x1p-24f - 0.5f;  // [-0.5, 0.5)
        v = norm ? 1.0f : 0.07f * uniform;  // std 0.02, initializer_range of DeepSeek configs
      }
    }
    return moonlight::Model(config, std::move(w));
  }();
  return m;
}

std::vector<std::int32_t> prompt() {
  std::vector<std::int32_t> ids(kPrompt);
  for (std::int64_t i = 0; i < kPrompt; ++i) ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % 16000);
  return ids;
}

// `tokens` greedy decode steps on `cache`, from token id 1.
void decode_greedily(const moonlight::Model& m, moonlight::KvCache& cache, std::int64_t tokens) {
  std::int32_t id = 1;
  for (std::int64_t i = 0; i < tokens; ++i) {
    const moonlight::Matrix logits = m.forward(std::span(&id, 1), cache, moonlight::LogitsFor::last_token);
    Eigen::Index next = 0;
    logits.row(0).maxCoeff(&next);
    id = static_cast<std::int32_t>(next);
  }
}

void BM_moonlight_prefill(benchmark::State& state) {
  const moonlight::Model& m = model();
  const auto ids = prompt();
  for (auto _ : state) {
    moonlight::KvCache cache(m.config());
    benchmark::DoNotOptimize(m.forward(ids, cache, moonlight::LogitsFor::last_token).data());
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kPrompt), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_moonlight_decode(benchmark::State& state) {
  const moonlight::Model& m = model();
  moonlight::KvCache cache(m.config());
  (void)m.forward(prompt(), cache, moonlight::LogitsFor::last_token);
  for (auto _ : state) {
    decode_greedily(m, cache, kDecode);
    state.PauseTiming();
    cache.truncate(kPrompt);
    state.ResumeTiming();
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kDecode), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["kv_bytes_per_token"] = static_cast<double>(cache.bytes_per_token());
  state.counters["params"] = static_cast<double>(moonlight::count_parameters(m.config()).total);
}

BENCHMARK(BM_moonlight_prefill)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_moonlight_decode)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- a checkpoint from disk (MOONLIGHT_CHECKPOINT) ----------------------------------------------

constexpr std::int64_t kCheckpointPrompt = 32;
constexpr std::int64_t kCheckpointDecode = 8;

// This process's resident set in bytes (/proc/self/status, VmRSS).
double resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      double kb = 0;
      status >> kb;
      return kb * 1024.0;
    }
    status.ignore(1 << 12, '\n');
  }
  return 0.0;
}

struct Mapped {
  std::unique_ptr<moonlight::Model> model;
  double load_seconds = 0.0;
  double resident_after_load = 0.0;
};

const Mapped& mapped(const char* dir) {
  static const Mapped m = [&] {
    Mapped out;
    const auto start = std::chrono::steady_clock::now();
    out.model = std::make_unique<moonlight::Model>(moonlight::Model::map(dir));
    out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    out.resident_after_load = resident_bytes();
    return out;
  }();
  return m;
}

std::vector<std::int32_t> checkpoint_prompt(const moonlight::Config& c) {
  std::vector<std::int32_t> ids(kCheckpointPrompt);
  for (std::int64_t i = 0; i < kCheckpointPrompt; ++i)
    ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % c.vocab_size);
  return ids;
}

void BM_checkpoint_prefill(benchmark::State& state, const char* dir) {
  const Mapped& m = mapped(dir);
  const auto ids = checkpoint_prompt(m.model->config());
  for (auto _ : state) {
    moonlight::KvCache cache(m.model->config());
    benchmark::DoNotOptimize(m.model->forward(ids, cache, moonlight::LogitsFor::last_token).data());
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kCheckpointPrompt), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["load_s"] = m.load_seconds;
  state.counters["rss_after_load_GB"] = m.resident_after_load / 1e9;
  state.counters["rss_GB"] = resident_bytes() / 1e9;
}

void BM_checkpoint_decode(benchmark::State& state, const char* dir) {
  const Mapped& m = mapped(dir);
  moonlight::KvCache cache(m.model->config());
  (void)m.model->forward(checkpoint_prompt(m.model->config()), cache, moonlight::LogitsFor::last_token);
  for (auto _ : state) {
    decode_greedily(*m.model, cache, kCheckpointDecode);
    state.PauseTiming();
    cache.truncate(kCheckpointPrompt);
    state.ResumeTiming();
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kCheckpointDecode), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["rss_GB"] = resident_bytes() / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* dir = std::getenv("MOONLIGHT_CHECKPOINT")) {
    benchmark::RegisterBenchmark("BM_checkpoint_prefill", BM_checkpoint_prefill, dir)
        ->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
    benchmark::RegisterBenchmark("BM_checkpoint_decode", BM_checkpoint_decode, dir)
        ->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
