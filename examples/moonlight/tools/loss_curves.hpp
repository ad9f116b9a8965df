// A run directory's metrics.jsonl: finding it, reading it step by step, and its loss curves
// (`moonlight train` writes them and plots them as it goes; `compare` and `logits` read them).
#pragma once

#include <filesystem>
#include <fstream>
#include <moonlight/plot.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "muon/error.hpp"

namespace moonlight::cli {

// A run directory's metrics.jsonl, or a typed error naming the run.
inline std::filesystem::path run_metrics(const std::filesystem::path& run) {
  std::filesystem::path metrics = run / "metrics.jsonl";
  if (!std::filesystem::exists(metrics)) {
    throw muon::FileError("run '" + run.string() + "' has no metrics.jsonl; pass directories written by `moonlight train`");
  }
  return metrics;
}

// Calls `step(j)` for each step's line of a metrics.jsonl, in order. A line that is not a JSON
// object with "tokens" (one cut short by a crash) is skipped.
template <class F>
void for_each_step(const std::filesystem::path& metrics_file, F&& step) {
  std::ifstream in(metrics_file);
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("tokens")) step(j);
  }
}

// Reads metrics.jsonl into the train and validation curves over tokens seen.
inline std::vector<Series> loss_curves(const std::filesystem::path& metrics_file, const std::string& label) {
  Series train{label + " train", {}, {}}, val{label + " validation", {}, {}};
  for_each_step(metrics_file, [&](const nlohmann::json& j) {
    const auto tokens = j.at("tokens").get<double>();
    train.x.push_back(tokens);
    train.y.push_back(j.at("loss").get<double>());
    if (j.contains("val_loss")) {
      val.x.push_back(tokens);
      val.y.push_back(j.at("val_loss").get<double>());
    }
  });
  std::vector<Series> out{std::move(train)};
  if (!val.x.empty()) out.push_back(std::move(val));
  return out;
}

}  // namespace moonlight::cli
