// Config parsing: the real Moonlight-16B-A3B config.json, the tiny fixtures, and every refusal.
#include <doctest/doctest.h>

#include <fstream>
#include <numeric>

#include "fixtures.hpp"
#include "moonlight/config.hpp"
#include "moonlight/weights.hpp"
#include "temp_dir.hpp"

using moonlight::Config;
using moonlight::ConfigError;
using moonlight::test::fixture;

namespace {

nlohmann::json moonlight_json() {
  std::ifstream in(fixture("moonlight_16b_a3b_instruct_config.json"));
  return nlohmann::json::parse(in);
}

// The field named by the ConfigError that `j` raises, or "" if it loads.
std::string rejected_field(const nlohmann::json& j) {
  try {
    (void)Config::from_json(j);
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find(e.field()) != std::string::npos);
    return e.field();
  }
  return "";
}

}  // namespace

TEST_CASE("the real Moonlight-16B-A3B-Instruct config.json loads unchanged") {
  const Config c = Config::load(fixture("moonlight_16b_a3b_instruct_config.json"));
  CHECK(c.vocab_size == 163840);
  CHECK(c.hidden_size == 2048);
  CHECK(c.intermediate_size == 11264);
  CHECK(c.moe_intermediate_size == 1408);
  CHECK(c.num_hidden_layers == 27);
  CHECK(c.num_attention_heads == 16);
  CHECK(c.n_routed_experts == 64);
  CHECK(c.num_experts_per_tok == 6);
  CHECK(c.n_shared_experts == 2);
  CHECK(c.shared_intermediate_size() == 2816);
  CHECK(c.n_group == 1);
  CHECK(c.topk_group == 1);
  CHECK_FALSE(c.q_lora_rank.has_value());
  CHECK(c.kv_lora_rank == 512);
  CHECK(c.qk_head_dim() == 192);
  CHECK(c.v_head_dim == 128);
  CHECK(c.rope_theta == 50000.0);
  CHECK(c.rms_norm_eps == 1e-5);
  CHECK(c.routed_scaling_factor == 2.446);
  CHECK(c.norm_topk_prob);
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK(c.bos_token_id == 163584);
  CHECK(c.eos_token_ids == std::vector<std::int32_t>{163586});
  CHECK_FALSE(c.is_moe_layer(0));
  for (int l = 1; l < 27; ++l) CHECK(c.is_moe_layer(l));
  CHECK(c.json == moonlight_json());  // kept whole, so a save writes every field back
}

TEST_CASE("the Moonlight layout has the published tensor and parameter counts (docs/moonlight-architecture.md §2)") {
  const Config c = Config::from_json(moonlight_json());
  const std::vector<moonlight::TensorSpec> layout = moonlight::tensor_layout(c);
  CHECK(layout.size() == 5317);
  std::int64_t total = 0, embeddings = 0;
  for (const auto& t : layout) {
    total += muon::numel(t.shape);
    if (t.role == muon::Role::embedding || t.role == muon::Role::head) embeddings += muon::numel(t.shape);
  }
  CHECK(total == 15'960'110'208);
  CHECK(total - embeddings == 15'289'021'568);
}

TEST_CASE("the fixture configs written by transformers load") {
  const Config a = Config::load(fixture("tiny_moonlight/config.json"));
  CHECK_FALSE(a.q_lora_rank.has_value());
  CHECK(a.first_k_dense_replace == 1);
  const Config b = Config::load(fixture("tiny_qlora_groups/config.json"));
  CHECK(b.q_lora_rank == 24);
  CHECK(b.n_group == 4);
  CHECK(b.topk_group == 2);
  CHECK_FALSE(b.is_moe_layer(1));
  CHECK(b.is_moe_layer(2));
}

TEST_CASE("unsupported or inconsistent fields are refused, naming the field") {
  const nlohmann::json base = moonlight_json();
  const auto with = [&](const char* key, nlohmann::json value) {
    nlohmann::json j = base;
    j[key] = std::move(value);
    return rejected_field(j);
  };
  const auto without = [&](const char* key) {
    nlohmann::json j = base;
    j.erase(key);
    return rejected_field(j);
  };
  CHECK(rejected_field(base).empty());
  CHECK(with("rope_scaling", {{"type", "yarn"}, {"factor", 40.0}}) == "rope_scaling");
  CHECK(with("rope_scaling", nullptr).empty());  // null is the same as absent
  CHECK(with("rope_interleave", false) == "rope_interleave");
  CHECK(with("rope_interleave", true).empty());
  CHECK(with("scoring_func", "softmax") == "scoring_func");
  CHECK(with("topk_method", "greedy") == "topk_method");
  CHECK(with("hidden_act", "gelu") == "hidden_act");
  CHECK(with("attention_bias", true) == "attention_bias");
  CHECK(with("model_type", "llama") == "model_type");
  CHECK(with("moe_layer_freq", 2) == "moe_layer_freq");
  CHECK(with("n_group", 3) == "n_group");  // does not divide 64 experts
  CHECK(with("n_group", 64) == "n_group");  // one expert per group: no top-2 group score
  CHECK(with("topk_group", 2) == "topk_group");  // more than n_group = 1
  CHECK(with("num_experts_per_tok", 65) == "num_experts_per_tok");
  CHECK(with("first_k_dense_replace", 28) == "first_k_dense_replace");
  CHECK(with("qk_rope_head_dim", 63) == "qk_rope_head_dim");
  CHECK(with("head_dim", 128) == "head_dim");
  CHECK(with("qk_head_dim", 128) == "qk_head_dim");
  CHECK(with("hidden_size", "2048") == "hidden_size");
  CHECK(with("hidden_size", 0) == "hidden_size");
  CHECK(with("q_lora_rank", -1) == "q_lora_rank");
  CHECK(with("norm_topk_prob", 1) == "norm_topk_prob");
  CHECK(with("eos_token_id", 163840) == "eos_token_id");
  CHECK(with("eos_token_id", nlohmann::json::array({163585, 163586})).empty());
  CHECK(without("hidden_size") == "hidden_size");
  CHECK(without("kv_lora_rank") == "kv_lora_rank");
  CHECK(without("n_routed_experts") == "n_routed_experts");
  CHECK(rejected_field(nlohmann::json::array()) == "<root>");
}

TEST_CASE("size fields out of range are refused before any conversion or product (issue 14)") {
  const nlohmann::json base = moonlight_json();
  const auto with = [&](const char* key, nlohmann::json value) {
    nlohmann::json j = base;
    j[key] = std::move(value);
    return rejected_field(j);
  };
  // Floats: 1e30 would be UB converted to int64; 1.5 would silently truncate.
  CHECK(with("qk_nope_head_dim", 1e30) == "qk_nope_head_dim");
  CHECK(with("hidden_size", 1.5) == "hidden_size");
  CHECK(with("vocab_size", -1) == "vocab_size");
  // 2^62 twice overflowed qk_head_dim (and heads × qk_head_dim) in int64.
  CHECK(with("qk_nope_head_dim", std::int64_t{1} << 62) == "qk_nope_head_dim");
  CHECK(with("qk_rope_head_dim", std::int64_t{1} << 62) == "qk_rope_head_dim");
  // Beyond int64: must not wrap to a small or negative value.
  CHECK(with("num_attention_heads", std::uint64_t{1} << 63) == "num_attention_heads");
  CHECK(with("eos_token_id", std::uint64_t{1} << 63) == "eos_token_id");
  CHECK(with("bos_token_id", 4294967296) == "bos_token_id");
  // Each bound, and the value just inside it.
  CHECK(with("hidden_size", moonlight::kMaxConfigWidth + 1) == "hidden_size");
  CHECK(with("num_hidden_layers", moonlight::kMaxConfigCount + 1) == "num_hidden_layers");
  CHECK(with("vocab_size", moonlight::kMaxConfigVocab + 1) == "vocab_size");
  CHECK(with("max_position_embeddings", moonlight::kMaxConfigVocab).empty());
  nlohmann::json many = base;
  many["num_hidden_layers"] = 1 << 15;
  many["n_routed_experts"] = 64;
  CHECK(rejected_field(many) == "n_routed_experts");
}

TEST_CASE("a config file's refusal names the file and the field") {
  const muon::test::TempDir dir("moonlight_config");
  nlohmann::json j = moonlight_json();
  j["qk_nope_head_dim"] = 1e30;
  const std::filesystem::path path = dir / "config.json";
  std::ofstream(path) << j.dump();
  try {
    (void)Config::load(path);
    FAIL("loaded");
  } catch (const ConfigError& e) {
    CHECK(e.field() == "qk_nope_head_dim");
    CHECK(std::string(e.what()).find(path.string()) != std::string::npos);
    CHECK(std::string(e.what()).find("'qk_nope_head_dim'") != std::string::npos);
  }
}

TEST_CASE("a missing or malformed config file is a FileError naming it") {
  CHECK_THROWS_WITH_AS(Config::load(fixture("no_such_config.json")), doctest::Contains("no_such_config.json"),
                       muon::FileError);
  CHECK_THROWS_WITH_AS(Config::load(fixture("tiny_moonlight/model.safetensors")),
                       doctest::Contains("is not valid JSON"), muon::FileError);
}
