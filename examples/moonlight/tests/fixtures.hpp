// Shared helpers of the Moonlight tests: fixture paths, the reference file's integer tensors, and
// scratch directories.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include "muon/io/safetensors.hpp"

namespace moonlight::test {

inline std::filesystem::path fixture(const std::string& name) { return std::filesystem::path(MOONLIGHT_FIXTURE_DIR) / name; }

// An I64 tensor of a fixture (token ids) as int32.
inline std::vector<std::int32_t> read_ids(const muon::safetensors::File& file, const std::string& name) {
  const auto bytes = file.bytes(name);
  std::vector<std::int32_t> out(bytes.size() / sizeof(std::int64_t));
  for (std::size_t i = 0; i < out.size(); ++i) {
    std::int64_t v = 0;
    std::memcpy(&v, bytes.data() + i * sizeof v, sizeof v);
    out[i] = static_cast<std::int32_t>(v);
  }
  return out;
}

// A fresh directory under the system temp dir, removed when the object dies.
struct ScratchDir {
  std::filesystem::path path;
  explicit ScratchDir(const std::string& tag)
      : path(std::filesystem::temp_directory_path() / ("moonlight_" + tag + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~ScratchDir() { std::filesystem::remove_all(path); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
};

// Whether two steps' per-layer, per-head maximum attention logits agree within `relative` of each
// value. Passes that stack other sequences together (another micro-batch split, thread or rank
// count) run products of other row counts, whose BLAS blocking rounds a row's logits differently
// in the last bits; the same split gives the same bits.
inline bool same_maxima(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b,
                        double relative = 1e-5) {
  if (a.size() != b.size()) return false;
  for (std::size_t l = 0; l < a.size(); ++l) {
    if (a[l].size() != b[l].size()) return false;
    for (std::size_t h = 0; h < a[l].size(); ++h)
      if (!(std::abs(a[l][h] - b[l][h]) <= relative * std::abs(b[l][h]))) return false;
  }
  return true;
}

}  // namespace moonlight::test
