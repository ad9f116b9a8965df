// Shared helpers of the Moonlight tests: fixture paths, the reference file's integer tensors, and
// scratch directories.
#pragma once

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

}  // namespace moonlight::test
