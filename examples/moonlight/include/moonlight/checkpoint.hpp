// moonlight/checkpoint.hpp: training checkpoints that are complete or absent, and verified as one
// unit on read.
//
// A run directory holds checkpoints/step-00000120/ and so on, and `latest`, a symlink to the
// newest. A checkpoint directory is a Hugging Face checkpoint (config.json, model.safetensors in
// F32 so that a resumed run is bit-exact, tiktoken.model), so `moonlight generate --model
// RUN/latest` and transformers' from_pretrained read it as is, plus optimizer.safetensors,
// trainer.json (the step, the tokens seen, the corpus fingerprint, the run config) and
// manifest.json: the step, and the size and CRC-32 of every other file, trainer.json included,
// with a CRC-32 of the manifest itself.
//
// Writing: everything goes into a temporary directory (.step-00000120.tmp), each file fsynced;
// manifest.json comes last, and the directory is renamed into place; `latest` is replaced by a
// rename too. A kill at any moment leaves the previous checkpoint as `latest`.
// Reading (open_checkpoint) checks, before anything is used: the manifest's own CRC; that every
// file of the directory is listed and every listed file is a plain file of that directory (a
// name of [A-Za-z0-9._-], no leading dot: no path, no `..`, no symlink, no device) with its
// recorded size and CRC; that the manifest, trainer.json and the directory name (when it is
// step-N) agree on the step. The trainer checks the optimizer state's step too. docs/guarantees.md
// says what this covers and what it does not.
//
//   fs::path staging = moonlight::begin_checkpoint(run_dir, step);   // empty temporary directory
//   ... write the model and optimizer files into staging ...
//   moonlight::commit_checkpoint(run_dir, step, staging, {.tokens = t, .data = d, .run = r}, keep);
//   moonlight::VerifiedCheckpoint c = moonlight::open_checkpoint(run_dir / "latest");
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "muon/error.hpp"
#include "muon/io/atomic_file.hpp"
#include "muon/io/json.hpp"
#include "muon/schedule.hpp"

namespace moonlight {

inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kTrainerStateFile = "trainer.json";
inline constexpr const char* kCheckpointFormat = "moonlight.training_checkpoint.v2";
// Far above what a checkpoint holds (six files, a manifest of under 1 KiB); they bound what a
// damaged or crafted manifest can make the reader do.
inline constexpr std::uintmax_t kMaxManifestBytes = 1 << 20;
inline constexpr std::size_t kMaxCheckpointFiles = 64;
inline constexpr std::size_t kMaxFileNameBytes = 255;

[[nodiscard]] inline std::string checkpoint_name(std::int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
  return name;
}

// What trainer.json records beside the step.
struct TrainerState {
  std::int64_t tokens = 0;   // training tokens seen, over all ranks
  nlohmann::json data;       // the corpus fingerprint, so that a resume refuses another corpus
  nlohmann::json run;        // the run config (train_options.hpp's RunConfig as JSON)
};

// A checkpoint whose every file was verified. `dir` is the checkpoint directory itself (symlinks
// resolved).
struct VerifiedCheckpoint {
  std::filesystem::path dir;
  std::int64_t step = 0;
  TrainerState state;
};

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

[[nodiscard]] inline std::uint32_t crc32_of(std::string_view text) {
  return static_cast<std::uint32_t>(
      ::crc32(::crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(text.data()), static_cast<uInt>(text.size())));
}

// A name that can only mean a file of the directory itself.
[[nodiscard]] inline bool is_plain_file_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxFileNameBytes || name.front() == '.') return false;
  return std::ranges::all_of(name, [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  });
}

// The manifest's text: the JSON without its "crc32" member, as dumped; the CRC covers exactly it.
[[nodiscard]] inline std::string manifest_body(nlohmann::json manifest) {
  manifest.erase("crc32");
  return manifest.dump();
}

// A non-negative integer member of a JSON object, range-checked before any conversion
// (muon::io::integer_in).
template <class Fail>
[[nodiscard]] std::int64_t count_member(const nlohmann::json& object, const char* key, std::int64_t max, Fail&& fail) {
  const auto it = object.find(key);
  if (it == object.end()) throw fail(std::string("\"") + key + "\" is missing");
  const std::optional<std::int64_t> value = muon::io::integer_in(*it, 0, max);
  if (!value) throw fail(std::string("\"") + key + "\" is " + it->dump() + ", expected an integer in [0, " + std::to_string(max) + "]");
  return *value;
}

// The step a directory named step-N stands for; -1 for any other name.
[[nodiscard]] inline std::int64_t step_of_name(const std::string& name) {
  if (name.size() != checkpoint_name(0).size() || !name.starts_with("step-")) return -1;
  std::int64_t step = 0;
  for (const char c : std::string_view(name).substr(5)) {
    if (c < '0' || c > '9') return -1;
    step = step * 10 + (c - '0');
  }
  return step;
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

// Seals `staging`: writes trainer.json, then the manifest of every file, renames the directory to
// checkpoints/step-N, points `latest` at it and keeps the newest `keep` checkpoints.
inline void commit_checkpoint(const std::filesystem::path& run_dir, std::int64_t step,
                              const std::filesystem::path& staging, const TrainerState& state, std::int64_t keep) {
  namespace fs = std::filesystem;
  const nlohmann::json trainer{{"format", kCheckpointFormat}, {"step", step}, {"tokens", state.tokens},
                               {"data", state.data}, {"run", state.run}};
  muon::io::write_file_atomically(staging / kTrainerStateFile, trainer.dump(2) + "\n", "trainer state");

  nlohmann::json files = nlohmann::json::object();
  for (const fs::directory_entry& e : fs::directory_iterator(staging)) {
    const std::string name = e.path().filename().string();
    if (!detail::is_plain_file_name(name) || !e.is_regular_file()) {
      throw muon::FileError("checkpoint staging '" + staging.string() + "' holds '" + name +
                            "', which a checkpoint cannot list (plain files named [A-Za-z0-9._-] only)");
    }
    const detail::FileDigest d = detail::digest_file(e.path());
    files[name] = {{"bytes", d.size}, {"crc32", d.crc32}};
  }
  nlohmann::json manifest{{"format", kCheckpointFormat}, {"step", step}, {"files", std::move(files)}};
  manifest["crc32"] = detail::crc32_of(detail::manifest_body(manifest));
  muon::io::write_file_atomically(staging / kManifestFile, manifest.dump(2) + "\n", "checkpoint manifest");

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

// Whether `dir` carries a checkpoint manifest (a directory `train` wrote) rather than being a plain
// Hugging Face directory, which has no checksums to verify.
[[nodiscard]] inline bool has_manifest(const std::filesystem::path& dir) {
  std::error_code ec;
  return std::filesystem::exists(dir / kManifestFile, ec) ||
         std::filesystem::exists(dir / "latest" / kManifestFile, ec);
}

// Verifies a checkpoint directory (or a run directory: its `latest`) as the header comment says.
// Every failure is a FileError naming the checkpoint and what is wrong; nothing is read from a
// file before its size and CRC matched.
[[nodiscard]] inline VerifiedCheckpoint open_checkpoint(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  fs::path dir = fs::exists(path / "latest") ? path / "latest" : path;
  std::error_code ec;
  dir = fs::canonical(dir, ec);
  if (ec) throw muon::FileError("checkpoint '" + path.string() + "' does not exist");
  const auto fail = [&](const std::string& what) {
    return muon::FileError("checkpoint '" + dir.string() + "': " + what +
                           "; resume from an older checkpoint in its checkpoints/ directory");
  };
  const auto fail_in = [&](const char* file) {
    return [&fail, file](const std::string& what) { return fail(std::string(file) + ": " + what); };
  };

  const fs::path manifest_path = dir / kManifestFile;
  const fs::file_status manifest_status = fs::symlink_status(manifest_path, ec);
  if (ec || !fs::is_regular_file(manifest_status))
    throw fail("has no manifest.json (not a training checkpoint, an unfinished one, or one of an older format)");
  if (fs::file_size(manifest_path, ec) > kMaxManifestBytes || ec)
    throw fail("manifest.json is larger than " + std::to_string(kMaxManifestBytes) + " bytes");
  const nlohmann::json manifest = muon::io::read_json_file(manifest_path, "checkpoint '" + dir.string() + "': manifest.json");
  if (!manifest.is_object() || !manifest.contains("crc32") || !manifest["crc32"].is_number_unsigned() ||
      manifest["crc32"].get<std::uint64_t>() != detail::crc32_of(detail::manifest_body(manifest))) {
    throw fail("manifest.json does not match its own CRC-32 (truncated or altered)");
  }
  if (manifest.value("format", nlohmann::json()) != kCheckpointFormat)
    throw fail("manifest.json has an unknown format (expected " + std::string(kCheckpointFormat) + ")");
  VerifiedCheckpoint out{dir, detail::count_member(manifest, "step", muon::kMaxStepCount, fail_in(kManifestFile)), {}};
  const std::int64_t named_step = detail::step_of_name(dir.filename().string());
  if (named_step >= 0 && named_step != out.step) {
    throw fail("manifest.json is of step " + std::to_string(out.step) + " but the directory is named " +
               dir.filename().string());
  }

  const auto files = manifest.find("files");
  if (files == manifest.end() || !files->is_object() || files->size() > kMaxCheckpointFiles)
    throw fail("manifest.json: \"files\" must be an object of at most " + std::to_string(kMaxCheckpointFiles) + " files");
  for (const auto& entry : files->items()) {
    const std::string& name = entry.key();  // not a structured binding: clang 14 cannot capture one
    const nlohmann::json& expected = entry.value();
    if (!detail::is_plain_file_name(name)) throw fail("manifest.json lists '" + name + "', which is not a plain file name");
    const fs::file_status status = fs::symlink_status(dir / name, ec);
    if (ec || !fs::exists(status)) throw fail("file '" + name + "' is missing");
    if (!fs::is_regular_file(status)) throw fail("'" + name + "' is not a regular file (a link, a directory or a device)");
    if (!expected.is_object()) throw fail("manifest.json: the entry of '" + name + "' is not an object");
    const auto fail_entry = [&](const std::string& what) { return fail("manifest.json: '" + name + "': " + what); };
    const auto bytes = detail::count_member(expected, "bytes", std::numeric_limits<std::int64_t>::max(), fail_entry);
    const auto crc = detail::count_member(expected, "crc32", std::numeric_limits<std::uint32_t>::max(), fail_entry);
    const detail::FileDigest d = detail::digest_file(dir / name);
    if (d.size != static_cast<std::uint64_t>(bytes) || d.crc32 != static_cast<std::uint32_t>(crc))
      throw fail("file '" + name + "' does not match its recorded size and CRC-32 (truncated or altered)");
  }
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name != kManifestFile && !files->contains(name))
      throw fail("'" + name + "' is not in manifest.json (added after the checkpoint was written?)");
  }
  if (!files->contains(kTrainerStateFile)) throw fail("manifest.json does not list trainer.json");

  const nlohmann::json trainer = muon::io::read_json_file(dir / kTrainerStateFile, "checkpoint '" + dir.string() + "': trainer.json");
  const auto fail_trainer = fail_in(kTrainerStateFile);
  if (!trainer.is_object() || trainer.value("format", nlohmann::json()) != kCheckpointFormat)
    throw fail_trainer("unknown format (expected " + std::string(kCheckpointFormat) + ")");
  const std::int64_t trainer_step = detail::count_member(trainer, "step", muon::kMaxStepCount, fail_trainer);
  if (trainer_step != out.step)
    throw fail("trainer.json is of step " + std::to_string(trainer_step) + " but manifest.json of step " + std::to_string(out.step));
  out.state.tokens = detail::count_member(trainer, "tokens", std::numeric_limits<std::int64_t>::max(), fail_trainer);
  for (const char* key : {"data", "run"})
    if (!trainer.contains(key) || !trainer[key].is_object()) throw fail_trainer(std::string("\"") + key + "\" must be an object");
  out.state.data = trainer["data"];
  out.state.run = trainer["run"];
  return out;
}

}  // namespace moonlight
