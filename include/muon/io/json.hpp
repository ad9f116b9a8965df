// muon/io/json.hpp: the one way the project parses JSON it reads from files: bounded nesting and
// typed errors.
//
// Every byte of a file is untrusted. nlohmann's parser reports bad input with its own exception
// types (a number beyond double's range, 1e400, is an out_of_range), and a document nested a
// million levels deep parses, then overflows the stack when it is copied or printed. parse_json
// turns every failure into a muon::FileError naming the file, and refuses nesting deeper than
// kMaxJsonDepth while parsing, before any deep tree exists.
//
//   const nlohmann::json j = muon::io::parse_json(text, "config '" + path.string() + "'");
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "muon/error.hpp"

namespace muon::io {

// Deeper than any file the project reads (a config nests 3 levels, a run config 5).
inline constexpr int kMaxJsonDepth = 64;

// The parsed document, or a FileError whose message begins with `source` (say which file, e.g.
// "config '/x/config.json'"). `also(depth, event, value)` sees every
// parse event too, as nlohmann's callbacks do (return false to drop the value); it may throw.
template <class Callback>
[[nodiscard]] nlohmann::json parse_json(std::string_view text, const std::string& source, Callback&& also) {
  using Event = nlohmann::json::parse_event_t;
  const auto bounded = [&](int depth, Event event, nlohmann::json& value) {
    if (depth > kMaxJsonDepth)
      throw FileError(source + " nests JSON deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return also(depth, event, value);
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), bounded);
  } catch (const nlohmann::json::exception& e) {
    throw FileError(source + " is not valid JSON: " + e.what());
  }
}
[[nodiscard]] inline nlohmann::json parse_json(std::string_view text, const std::string& source) {
  return parse_json(text, source, [](int, nlohmann::json::parse_event_t, nlohmann::json&) { return true; });
}

// The value of a JSON integer in [min, max], or nullopt for a float (1.5, 1e30), a non-number or
// a value outside, checked on the JSON value before any conversion (one beyond int64 must not wrap).
[[nodiscard]] inline std::optional<std::int64_t> integer_in(const nlohmann::json& v, std::int64_t min, std::int64_t max) {
  if (!v.is_number_integer()) return std::nullopt;
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(max) || static_cast<std::int64_t>(u) < min) return std::nullopt;
    return static_cast<std::int64_t>(u);
  }
  const auto i = v.get<std::int64_t>();
  if (i < min || i > max) return std::nullopt;
  return i;
}

// A JSON file, read whole and parsed by parse_json; FileError if it cannot be read.
[[nodiscard]] inline nlohmann::json read_json_file(const std::filesystem::path& path, const std::string& source) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError("cannot open " + source);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw FileError("cannot read " + source);
  return parse_json(text, source);
}

}  // namespace muon::io
