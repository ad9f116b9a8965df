// Moonlight forward-pass throughput on the CPU: prefill (one decompressed pass over a prompt) and
// decode (one token at a time on the absorbed latent KV cache), in tokens/s, for a Moonlight-shaped
// model of about 106M parameters with random weights made in memory (no files). The shape keeps
// Moonlight's structure and ratios (64 experts, top-6, 2 shared, first layer dense, q_lora_rank
// null, rope 1/3 of the qk head) at hidden 512. bench/compare_moonlight.py runs transformers on
// the same config and thread count and prints the ratios.
//
//   OMP_NUM_THREADS=2 build/release/bench/bench_moonlight
#include <benchmark/benchmark.h>

#include <cstdint>
#include <moonlight/model.hpp>
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
    std::int32_t id = 1;
    for (std::int64_t i = 0; i < kDecode; ++i) {
      const moonlight::Matrix logits = m.forward(std::span(&id, 1), cache, moonlight::LogitsFor::last_token);
      Eigen::Index next = 0;
      logits.row(0).maxCoeff(&next);
      id = static_cast<std::int32_t>(next);
    }
    state.PauseTiming();
    cache.truncate(kPrompt);
    state.ResumeTiming();
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kDecode), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["kv_bytes_per_token"] = static_cast<double>(cache.bytes_per_token());
  std::int64_t params = 0;
  for (const auto& t : m.weights().tensors()) params += muon::numel(t.shape);
  state.counters["params"] = static_cast<double>(params);
}

BENCHMARK(BM_moonlight_prefill)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_moonlight_decode)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
