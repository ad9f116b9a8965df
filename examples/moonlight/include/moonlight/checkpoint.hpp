// moonlight/checkpoint.hpp: training checkpoints that are complete or absent, and checked on read.
//
// A run directory holds checkpoints/step-00000120/ and so on, and `latest`, a symlink to the
// newest. A checkpoint directory is a Hugging Face checkpoint (config.json, model.safetensors in
// F32 so that a resumed run is bit-exact, tiktoken.model), so `moonlight generate --model
// RUN/latest` and transformers' from_pretrained read it as is, plus optimizer.safetensors and
// trainer.json: the step, the tokens seen, the run config, and the size and CRC-32 of every other
// file. It is written under a temporary name (.step-00000120.tmp), its files fsynced, and renamed
// into place only when trainer.json is written; `latest` is replaced by a rename too. Reading
// checks every file's size and CRC before anything is used.
//
//   fs::path staging = moonlight::begin_checkpoint(run_dir, step);   // empty temporary directory
//   ... write the model and optimizer files into staging ...
//   moonlight::commit_checkpoint(run_dir, step, staging, state, keep);
//   moonlight::VerifiedCheckpoint c = moonlight::open_checkpoint(run_dir / "latest");
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "muon/error.hpp"
#include "muon/io/json.hpp"
#include "muon/io/atomic_file.hpp"

namespace moonlight {

inline constexpr const char* kTrainerStateFile = "trainer.json";
inline constexpr const char* kCheckpointFormat = "moonlight.training_checkpoint.v1";

[[nodiscard]] inline std::string checkpoint_name(std::int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
  return name;
}

namespace detail {

struct FileDigest {
  std::uint64_t size = 0;
  std::uint32_t crc32 = 0;
};

inline FileDigest digest_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw muon::FileError("cannot read checkpoint file '" + path.string() + "'");
  FileDigest d;
  uLong crc = ::crc32(0L, Z_NULL, 0);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto n = static_cast<std::size_t>(in.gcount());
    crc = ::crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()), static_cast<uInt>(n));
    d.size += n;
  }
  if (in.bad()) throw muon::FileError("cannot read checkpoint file '" + path.string() + "'");
  d.crc32 = static_cast<std::uint32_t>(crc);
  return d;
}

}  // namespace detail

// A fresh, empty staging directory for the checkpoint of `step` (a leftover from a crash is
// removed).
inline std::filesystem::path begin_checkpoint(const std::filesystem::path& run_dir, std::int64_t step) {
  const std::filesystem::path staging = run_dir / "checkpoints" / ("." + checkpoint_name(step) + ".tmp");
  std::filesystem::remove_all(staging);
  std::filesystem::create_directories(staging);
  return staging;
}

// Seals `staging`: records every file's size and CRC with `state` in trainer.json, renames the
// directory to checkpoints/step-N, points `latest` at it and keeps the newest `keep` checkpoints.
inline void commit_checkpoint(const std::filesystem::path& run_dir, std::int64_t step,
                              const std::filesystem::path& staging, nlohmann::json state, std::int64_t keep) {
  namespace fs = std::filesystem;
  nlohmann::json files = nlohmann::json::object();
  std::vector<fs::path> names;
  for (const fs::directory_entry& e : fs::directory_iterator(staging)) names.push_back(e.path().filename());
  std::ranges::sort(names);
  for (const fs::path& name : names) {
    const detail::FileDigest d = detail::digest_file(staging / name);
    files[name.string()] = {{"bytes", d.size}, {"crc32", d.crc32}};
  }
  state["format"] = kCheckpointFormat;
  state["step"] = step;
  state["files"] = std::move(files);
  muon::io::write_file_atomically(staging / kTrainerStateFile, state.dump(2) + "\n", "trainer state");

  const fs::path checkpoints = run_dir / "checkpoints";
  const fs::path final_dir = checkpoints / checkpoint_name(step);
  fs::remove_all(final_dir);  // a step written again after resuming from an older checkpoint
  fs::rename(staging, final_dir);
  muon::io::fsync_directory(checkpoints, "checkpoint", final_dir);

  const fs::path link_temp = run_dir / ".latest.tmp";
  fs::remove(link_temp);
  fs::create_directory_symlink(fs::path("checkpoints") / checkpoint_name(step), link_temp);
  fs::rename(link_temp, run_dir / "latest");
  muon::io::fsync_directory(run_dir, "checkpoint link", run_dir / "latest");

  std::vector<fs::path> sealed;
  for (const fs::directory_entry& e : fs::directory_iterator(checkpoints)) {
    if (e.is_directory() && e.path().filename().string().starts_with("step-")) sealed.push_back(e.path());
  }
  std::ranges::sort(sealed);
  for (std::size_t i = 0; i + static_cast<std::size_t>(keep) < sealed.size(); ++i) {
    if (sealed[i] != final_dir) fs::remove_all(sealed[i]);
  }
}

struct VerifiedCheckpoint {
  std::filesystem::path dir;  // the checkpoint directory itself (symlinks resolved)
  nlohmann::json state;       // trainer.json
  std::int64_t step = 0;
};

// Reads trainer.json of a checkpoint directory (or a run directory: its `latest`) and checks the
// size and CRC-32 of every file it lists. A missing, truncated or altered file is a FileError
// naming it.
[[nodiscard]] inline VerifiedCheckpoint open_checkpoint(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  fs::path dir = fs::exists(path / "latest") ? path / "latest" : path;
  std::error_code ec;
  dir = fs::canonical(dir, ec);
  if (ec) throw muon::FileError("checkpoint '" + path.string() + "' does not exist");
  const fs::path state_file = dir / kTrainerStateFile;
  const auto fail = [&](const std::string& what) {
    return muon::FileError("checkpoint '" + dir.string() + "': " + what +
                           "; resume from an older checkpoint in its checkpoints/ directory");
  };
  std::ifstream in(state_file);
  if (!in) throw fail("has no readable trainer.json (not a training checkpoint, or an unfinished one)");
  VerifiedCheckpoint out{dir, {}, 0};
  try {
    out.state = muon::io::read_json_file(state_file, "checkpoint '" + dir.string() + "': trainer.json");
    if (out.state.at("format") != kCheckpointFormat) throw fail("trainer.json has an unknown format");
    out.step = out.state.at("step").get<std::int64_t>();
    for (const auto& [name, expected] : out.state.at("files").items()) {
      if (!fs::exists(dir / name)) throw fail("file '" + name + "' is missing");
      const detail::FileDigest d = detail::digest_file(dir / name);
      if (d.size != expected.at("bytes").get<std::uint64_t>() || d.crc32 != expected.at("crc32").get<std::uint32_t>()) {
        throw fail("file '" + name + "' does not match its recorded size and CRC-32 (truncated or altered)");
      }
    }
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("trainer.json is unreadable: ") + e.what());
  }
  return out;
}

}  // namespace moonlight
