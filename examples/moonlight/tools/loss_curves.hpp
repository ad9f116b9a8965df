// The loss curves of a run directory, read from its metrics.jsonl (`moonlight train` writes them,
// plots them as it goes, and `moonlight compare` reads them).
#pragma once

#include <filesystem>
#include <fstream>
#include <moonlight/plot.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moonlight::cli {

// Reads metrics.jsonl into the train and validation curves over tokens seen.
inline std::vector<Series> loss_curves(const std::filesystem::path& metrics_file, const std::string& label) {
  Series train{label + " train", {}, {}}, val{label + " validation", {}, {}};
  std::ifstream in(metrics_file);
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("tokens")) continue;
    const auto tokens = j.at("tokens").get<double>();
    train.x.push_back(tokens);
    train.y.push_back(j.at("loss").get<double>());
    if (j.contains("val_loss")) {
      val.x.push_back(tokens);
      val.y.push_back(j.at("val_loss").get<double>());
    }
  }
  std::vector<Series> out{std::move(train)};
  if (!val.x.empty()) out.push_back(std::move(val));
  return out;
}

}  // namespace moonlight::cli
