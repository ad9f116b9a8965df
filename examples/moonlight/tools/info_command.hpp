// The `moonlight info` subcommand: a config's parameter counts (moonlight/parameter_count.hpp),
// tensor count and checkpoint size, without building the model.
//
//   moonlight info --config configs/moonlight-16b-a3b.json
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include <moonlight/config.hpp>
#include <moonlight/parameter_count.hpp>
#include <muon/io/json.hpp>

namespace moonlight::cli {

// A Hugging Face config.json, or the "model" of a run config (configs/tiny.json).
inline Config read_model_config(const std::filesystem::path& path) {
  const nlohmann::json j = muon::io::read_json_file(path, "config file '" + path.string() + "'");
  if (!j.is_object() || !j.contains("model")) return Config::load(path);
  try {
    return Config::from_json(j.at("model"));
  } catch (const ConfigError& e) {
    throw ConfigError(e, path);
  }
}

// 15960110208 → "15,960,110,208".
inline std::string with_thousands(std::int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

// One line for `moonlight train`: total, without embeddings, active per token.
inline std::string parameter_summary(const ParameterCount& n) {
  return with_thousands(n.total) + " parameters (" + with_thousands(n.without_embeddings()) + " without embeddings, " +
         with_thousands(n.active()) + " active per token)";
}

inline int info(const std::filesystem::path& config_path) {
  const ParameterCount n = count_parameters(read_model_config(config_path));
  const auto row = [](const char* what, std::int64_t value, const char* note = "") {
    std::printf("%-40s %18s%s\n", what, with_thousands(value).c_str(), note);
  };
  const auto gigabytes = [](std::int64_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, " (%.1f GB)", static_cast<double>(bytes) * 1e-9);
    return std::string(buf);
  };
  row("parameters", n.total);
  row("  embeddings (embed_tokens, lm_head)", n.embeddings);
  row("  without embeddings", n.without_embeddings());
  row("active per token, without embeddings", n.active());
  row("active per token, with lm_head", n.active_with_head());
  row("tensors", n.tensors);
  // The tensors' bytes; each file adds a header of a few hundred KB at most.
  row("checkpoint bytes, bf16", n.total * 2, gigabytes(n.total * 2).c_str());
  row("checkpoint bytes, fp32", n.total * 4, gigabytes(n.total * 4).c_str());
  return 0;
}

}  // namespace moonlight::cli
