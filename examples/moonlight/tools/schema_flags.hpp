// The `moonlight train` flags that override the run config, made from the field tables of
// moonlight::TrainOptions ("training") and muon::Options ("muon") (muon/schema.hpp), so that
// every field one value sets has a flag and none is hand-copied:
//
//   --steps 600  --seq-len 128       training.steps, training.seq_len
//   --lr 3e-3  --max-grad-norm 0.5   muon.lr, muon.max_grad_norm
//   --muon.ns.steps 6  --adamw.beta2 0.99  --muon-group.lr 0.02
//
// Each flag's value is read as JSON (numbers, true/false, null), else as a string (enum names),
// into a JSON patch of the run config; the run config's reader then checks it and names the field
// at fault. Lists and variants (the Newton–Schulz triples, the schedule) are set in the run config.
#pragma once

#include <CLI/CLI.hpp>
#include <muon/options_json.hpp>
#include <muon/schema.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <vector>

namespace moonlight::cli {

// A flag's text as a JSON value.
[[nodiscard]] inline nlohmann::json flag_value(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? nlohmann::json(text) : j;
}

// Adds a flag for every single-value field of `defaults`' table, under `section` of the run
// config; each writes what it is given into `patch`. `path` holds the enclosing fields' names.
template <muon::HasSchema S>
void add_schema_flags(CLI::App& app, const S& defaults, const std::string& section, nlohmann::json& patch,
                      const std::vector<std::string>& path = {}) {
  muon::for_each_field(defaults, [&](const auto& f, const auto& value) {
    using T = std::remove_cvref_t<decltype(value)>;
    std::vector<std::string> at = path;
    at.emplace_back(f.name);
    if constexpr (muon::HasSchema<T>) {
      add_schema_flags(app, value, section, patch, at);
    } else if constexpr (!muon::VariantField<T> && !muon::VectorField<T>) {
      std::string flag = "--", pointer = "/" + section, field = section;
      for (std::size_t i = 0; i < at.size(); ++i) {
        std::string name = at[i];
        for (char& c : name)
          if (c == '_') c = '-';
        flag += (i == 0 ? "" : ".") + name;
        pointer += "/" + at[i];
        field += "." + at[i];
      }
      app.add_option_function<std::string>(
          flag, [&patch, pointer](const std::string& text) { patch[nlohmann::json::json_pointer(pointer)] = flag_value(text); },
          "set " + field + " (default " + muon::value_to_json(value).dump() + ")");
    }
  });
}

}  // namespace moonlight::cli
