// moonlight/config.hpp: the DeepseekV3 architecture's hyper-parameters, read from a Hugging Face
// config.json.
//
// Every field the architecture uses is read and checked; the real Moonlight-16B-A3B config loads
// unchanged. Features this implementation does not have (YaRN `rope_scaling`, softmax routing,
// NeoX-order rope weights, attention biases, moe_layer_freq other than 1) are
// refused with a ConfigError naming the field, never silently ignored. Fields that only matter to
// training code or to other frameworks (aux_loss_alpha, seq_aux, ep_size, initializer_range, ...)
// are accepted and kept in `json` so that a saved checkpoint carries them unchanged.
//
// A config.json is untrusted: every size field must be a JSON integer (1.5, 1e30 and -1 are
// refused with the field's name, before any conversion) within an explicit bound, chosen so that
// every product the model forms (qk_head_dim, heads × head dims, any tensor's element count)
// stays far below 2^63: widths (hidden_size, intermediate sizes, lora ranks, head dims) at most
// kMaxConfigWidth = 2^20, counts (layers, heads, experts, groups) at most kMaxConfigCount = 2^16,
// vocab_size and max_position_embeddings at most kMaxConfigVocab = 2^24 (so token ids fit int32),
// and num_hidden_layers × n_routed_experts at most kMaxConfigExperts = 2^20. Moonlight-16B and
// DeepSeek-V3 are far inside them (hidden 2048/7168, 27/61 layers, 64/256 experts, vocab 163,840).
//
//   moonlight::Config c = moonlight::Config::load("Moonlight-16B-A3B-Instruct/config.json");
//   c.is_moe_layer(0);  // false: layer 0 is the dense SwiGLU
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "muon/error.hpp"
#include "muon/io/json.hpp"

namespace moonlight {

inline constexpr std::int64_t kMaxConfigWidth = std::int64_t{1} << 20;    // a width or head dim
inline constexpr std::int64_t kMaxConfigCount = std::int64_t{1} << 16;    // layers, heads, experts, groups
inline constexpr std::int64_t kMaxConfigVocab = std::int64_t{1} << 24;    // vocab, positions
inline constexpr std::int64_t kMaxConfigExperts = std::int64_t{1} << 20;  // routed experts over all layers

// A config.json field is missing, has the wrong type, contradicts another field, or asks for a
// feature this implementation does not have. `field()` is the JSON key at fault.
class ConfigError : public muon::InvalidArgument {
 public:
  ConfigError(std::string field, const std::string& what)
      : muon::InvalidArgument("config field '" + field + "': " + what), field_(std::move(field)) {}
  // The same error, its message prefixed with the file it came from.
  ConfigError(const ConfigError& e, const std::filesystem::path& file)
      : muon::InvalidArgument("config file '" + file.string() + "': " + e.what()), field_(e.field_) {}
  [[nodiscard]] const std::string& field() const noexcept { return field_; }

 private:
  std::string field_;
};

struct Config {
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;      // dense SwiGLU width (layers < first_k_dense_replace)
  std::int64_t moe_intermediate_size = 0;  // width of one routed expert
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t n_routed_experts = 0;
  std::int64_t n_shared_experts = 0;  // one SwiGLU of width n_shared_experts × moe_intermediate_size
  std::int64_t num_experts_per_tok = 0;
  std::int64_t n_group = 1;
  std::int64_t topk_group = 1;
  std::int64_t first_k_dense_replace = 0;
  std::int64_t moe_layer_freq = 1;
  std::int64_t kv_lora_rank = 0;
  std::optional<std::int64_t> q_lora_rank;  // null: a single q_proj (Moonlight)
  std::int64_t qk_nope_head_dim = 0;
  std::int64_t qk_rope_head_dim = 0;
  std::int64_t v_head_dim = 0;
  std::int64_t max_position_embeddings = 0;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  std::optional<std::int32_t> bos_token_id;
  std::vector<std::int32_t> eos_token_ids;  // config's eos_token_id, an int or a list

  nlohmann::json json;  // the file as read, so that save writes back every field

  // kv_a_layernorm and q_a_layernorm are built without an eps in transformers and DeepSeek's
  // remote code, so they use DeepseekV3RMSNorm's default, not rms_norm_eps (docs/moonlight-architecture.md §3.2).
  static constexpr double latent_norm_eps = 1e-6;

  [[nodiscard]] std::int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // DeepSeek's rule (remote modeling_deepseek.py); transformers' native class ignores
  // moe_layer_freq, so the two agree only for moe_layer_freq == 1, which from_json enforces.
  [[nodiscard]] bool is_moe_layer(std::int64_t layer) const {
    return layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  [[nodiscard]] std::int64_t shared_intermediate_size() const {
    return n_shared_experts * moe_intermediate_size;
  }

  static Config from_json(const nlohmann::json& j);
  static Config load(const std::filesystem::path& path);
};

namespace detail {

inline const nlohmann::json* find_field(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

// An integer field in [min, max] (muon::io::integer_in); anything else is a ConfigError naming the field.
inline std::int64_t int_field(const nlohmann::json& j, const char* key, std::optional<std::int64_t> fallback,
                              std::int64_t min, std::int64_t max) {
  const nlohmann::json* v = find_field(j, key);
  if (v == nullptr) {
    if (!fallback) throw ConfigError(key, "missing; a DeepseekV3 config needs it");
    return *fallback;
  }
  const std::optional<std::int64_t> value = muon::io::integer_in(*v, min, max);
  if (!value) {
    throw ConfigError(key, "is " + v->dump() + ", expected an integer in [" + std::to_string(min) + ", " +
                               std::to_string(max) + "]");
  }
  return *value;
}

inline double float_field(const nlohmann::json& j, const char* key, std::optional<double> fallback) {
  const nlohmann::json* v = find_field(j, key);
  if (v == nullptr) {
    if (!fallback) throw ConfigError(key, "missing; a DeepseekV3 config needs it");
    return *fallback;
  }
  if (!v->is_number()) throw ConfigError(key, "is " + v->dump() + ", expected a number");
  return v->get<double>();
}

inline bool bool_field(const nlohmann::json& j, const char* key, bool fallback) {
  const nlohmann::json* v = find_field(j, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) throw ConfigError(key, "is " + v->dump() + ", expected true or false");
  return v->get<bool>();
}

// A string field that must have one of the values this implementation supports.
inline void require_string(const nlohmann::json& j, const char* key, const char* supported, bool required) {
  const nlohmann::json* v = find_field(j, key);
  if (v == nullptr) {
    if (required) throw ConfigError(key, std::string("missing; expected \"") + supported + "\"");
    return;
  }
  if (!v->is_string() || v->get<std::string>() != supported) {
    throw ConfigError(key, "is " + v->dump() + "; only \"" + supported + "\" is supported");
  }
}

}  // namespace detail

inline Config Config::from_json(const nlohmann::json& j) {
  using detail::bool_field;
  using detail::find_field;
  using detail::float_field;
  using detail::int_field;
  if (!j.is_object()) throw ConfigError("<root>", "config.json must hold a JSON object");

  if (const nlohmann::json* type = find_field(j, "model_type");
      type != nullptr && (!type->is_string() || type->get<std::string>() != "deepseek_v3")) {
    throw ConfigError("model_type", "is " + type->dump() + "; this implementation reads \"deepseek_v3\"");
  }
  detail::require_string(j, "hidden_act", "silu", false);
  detail::require_string(j, "scoring_func", "sigmoid", false);
  detail::require_string(j, "topk_method", "noaux_tc", false);
  if (find_field(j, "rope_scaling") != nullptr) {
    throw ConfigError("rope_scaling", "is " + j.at("rope_scaling").dump() +
                                          "; YaRN/rope scaling is not supported (Moonlight has none): remove the "
                                          "field or set it to null");
  }
  if (!bool_field(j, "rope_interleave", true)) {
    throw ConfigError("rope_interleave",
                      "is false; only the interleaved (consecutive-pair) rope layout of DeepSeek checkpoints is "
                      "supported");
  }
  if (bool_field(j, "attention_bias", false)) {
    throw ConfigError("attention_bias", "is true; DeepseekV3 checkpoints have no biases and none are supported");
  }

  Config c;
  c.vocab_size = int_field(j, "vocab_size", std::nullopt, 1, kMaxConfigVocab);
  c.hidden_size = int_field(j, "hidden_size", std::nullopt, 1, kMaxConfigWidth);
  c.intermediate_size = int_field(j, "intermediate_size", std::nullopt, 1, kMaxConfigWidth);
  c.num_hidden_layers = int_field(j, "num_hidden_layers", std::nullopt, 1, kMaxConfigCount);
  c.num_attention_heads = int_field(j, "num_attention_heads", std::nullopt, 1, kMaxConfigCount);
  // Size fields are required; behaviour fields missing from the file take DeepseekV3Config's
  // defaults, as transformers would.
  c.n_routed_experts = int_field(j, "n_routed_experts", std::nullopt, 1, kMaxConfigCount);
  c.moe_intermediate_size = int_field(j, "moe_intermediate_size", std::nullopt, 1, kMaxConfigWidth);
  c.n_shared_experts = int_field(j, "n_shared_experts", std::nullopt, 0, kMaxConfigCount);
  c.num_experts_per_tok = int_field(j, "num_experts_per_tok", std::nullopt, 1, kMaxConfigCount);
  c.n_group = int_field(j, "n_group", 8, 1, kMaxConfigCount);
  c.topk_group = int_field(j, "topk_group", 4, 1, kMaxConfigCount);
  c.first_k_dense_replace = int_field(j, "first_k_dense_replace", 3, 0, kMaxConfigCount);
  c.moe_layer_freq = int_field(j, "moe_layer_freq", 1, 1, kMaxConfigCount);
  c.kv_lora_rank = int_field(j, "kv_lora_rank", std::nullopt, 1, kMaxConfigWidth);
  if (find_field(j, "q_lora_rank") != nullptr) c.q_lora_rank = int_field(j, "q_lora_rank", std::nullopt, 1, kMaxConfigWidth);
  c.qk_nope_head_dim = int_field(j, "qk_nope_head_dim", std::nullopt, 0, kMaxConfigWidth);
  c.qk_rope_head_dim = int_field(j, "qk_rope_head_dim", std::nullopt, 2, kMaxConfigWidth);
  c.v_head_dim = int_field(j, "v_head_dim", std::nullopt, 1, kMaxConfigWidth);
  c.max_position_embeddings = int_field(j, "max_position_embeddings", std::nullopt, 1, kMaxConfigVocab);
  c.routed_scaling_factor = float_field(j, "routed_scaling_factor", 2.5);
  c.norm_topk_prob = bool_field(j, "norm_topk_prob", true);
  c.rms_norm_eps = float_field(j, "rms_norm_eps", 1e-6);
  c.rope_theta = float_field(j, "rope_theta", 10000.0);
  c.tie_word_embeddings = bool_field(j, "tie_word_embeddings", false);

  if (c.qk_rope_head_dim % 2 != 0) {
    throw ConfigError("qk_rope_head_dim", "is " + std::to_string(c.qk_rope_head_dim) + "; rope rotates pairs, it must be even");
  }
  if (c.rms_norm_eps <= 0.0) throw ConfigError("rms_norm_eps", "must be positive");
  if (c.rope_theta <= 1.0) throw ConfigError("rope_theta", "must be greater than 1");
  // transformers writes these derived fields; a checkpoint whose copy disagrees was edited by hand.
  if (find_field(j, "head_dim") != nullptr && int_field(j, "head_dim", std::nullopt, 0, kMaxConfigWidth) != c.qk_rope_head_dim) {
    throw ConfigError("head_dim", "must equal qk_rope_head_dim (" + std::to_string(c.qk_rope_head_dim) + ")");
  }
  if (find_field(j, "qk_head_dim") != nullptr && int_field(j, "qk_head_dim", std::nullopt, 0, 2 * kMaxConfigWidth) != c.qk_head_dim()) {
    throw ConfigError("qk_head_dim", "must equal qk_nope_head_dim + qk_rope_head_dim (" + std::to_string(c.qk_head_dim()) + ")");
  }
  if (c.first_k_dense_replace > c.num_hidden_layers) {
    throw ConfigError("first_k_dense_replace", "is " + std::to_string(c.first_k_dense_replace) +
                                                    ", more than num_hidden_layers (" + std::to_string(c.num_hidden_layers) + ")");
  }
  if (c.moe_layer_freq != 1) {
    throw ConfigError("moe_layer_freq", "is " + std::to_string(c.moe_layer_freq) +
                                            "; transformers' DeepseekV3 ignores it and DeepSeek's code does not, so "
                                            "only 1 is supported");
  }
  // tensor_layout lists three tensors per routed expert of every layer.
  if (c.num_hidden_layers * c.n_routed_experts > kMaxConfigExperts) {
    throw ConfigError("n_routed_experts", "is " + std::to_string(c.n_routed_experts) + "; with " +
                                              std::to_string(c.num_hidden_layers) + " layers that is more than " +
                                              std::to_string(kMaxConfigExperts) + " experts in all");
  }
  if (c.n_routed_experts % c.n_group != 0) {
    throw ConfigError("n_group", "is " + std::to_string(c.n_group) + "; it must divide n_routed_experts (" +
                                     std::to_string(c.n_routed_experts) + ")");
  }
  if (c.topk_group > c.n_group) {
    throw ConfigError("topk_group", "is " + std::to_string(c.topk_group) + ", more than n_group (" + std::to_string(c.n_group) + ")");
  }
  const std::int64_t per_group = c.n_routed_experts / c.n_group;
  // The group score is the sum of each group's two best experts.
  if (c.n_group > 1 && per_group < 2) {
    throw ConfigError("n_group", "leaves " + std::to_string(per_group) + " expert per group; group scoring needs at least 2");
  }
  if (c.num_experts_per_tok > c.topk_group * per_group) {
    throw ConfigError("num_experts_per_tok", "is " + std::to_string(c.num_experts_per_tok) + ", more than the " +
                                                 std::to_string(c.topk_group * per_group) + " experts in topk_group groups");
  }

  if (const nlohmann::json* bos = find_field(j, "bos_token_id"); bos != nullptr) {
    c.bos_token_id = static_cast<std::int32_t>(int_field(j, "bos_token_id", std::nullopt, 0, c.vocab_size - 1));
  }
  if (const nlohmann::json* eos = find_field(j, "eos_token_id"); eos != nullptr) {
    const nlohmann::json list = eos->is_array() ? *eos : nlohmann::json::array({*eos});
    for (const auto& id : list) {
      const std::optional<std::int64_t> value = muon::io::integer_in(id, 0, c.vocab_size - 1);
      if (!value) throw ConfigError("eos_token_id", "holds " + id.dump() + ", not a token id below vocab_size");
      c.eos_token_ids.push_back(static_cast<std::int32_t>(*value));
    }
  }
  c.json = j;
  return c;
}

inline Config Config::load(const std::filesystem::path& path) {
  const nlohmann::json j = muon::io::read_json_file(path, "config file '" + path.string() + "'");
  try {
    return from_json(j);
  } catch (const ConfigError& e) {
    throw ConfigError(e, path);
  }
}

}  // namespace moonlight
