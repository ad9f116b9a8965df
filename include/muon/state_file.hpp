// muon/state_file.hpp: the optimizer state's file, opt-in (the core writes no files).
//
// One safetensors file: every state buffer as an F32 tensor named "<parameter>/<buffer>"
// (momentum, exp_avg, exp_avg_sq) with the parameter's shape, and the step counts and options in
// the metadata. Keyed by parameter name only, so a state written by the single-process optimizer
// loads into a ZeRO-1 run at any world size and back (distributed/zero1.hpp writes the same file).
//
//   muon::save_state(opt, "opt.safetensors");   // atomic: temp file, fsync, rename
//   muon::load_state(opt, "opt.safetensors");   // checked against the table before anything changes
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "muon/error.hpp"
#include "muon/io/json.hpp"
#include "muon/io/safetensors.hpp"
#include "muon/options.hpp"
#include "muon/options_json.hpp"
#include "muon/state.hpp"
#include "muon/tensor.hpp"

namespace muon {

inline constexpr const char* kStateFormat = "muon.optimizer_state.v2";

// Writes the state atomically (temp file, fsync, rename).
inline void write_state_file(const std::filesystem::path& path, const SavedState& state) {
  std::vector<safetensors::TensorToWrite> tensors;
  tensors.reserve(state.tensors.size());
  for (const StateTensor& t : state.tensors) tensors.push_back(safetensors::tensor_f32(t.name, t.shape, t.values));
  safetensors::write(path, tensors,
                     {{"format", kStateFormat},
                      {"step", std::to_string(state.step)},
                      {"skipped_steps", std::to_string(state.skipped_steps)},
                      {"options", to_json(state.options).dump()}});
}

// Reads and validates a file written by write_state_file; a file that is not one, or is
// truncated or corrupt, is a StateMismatch or FileError naming it. Matching the tensors against a
// parameter table is the optimizer's job (import_state).
[[nodiscard]] inline SavedState read_state_file(const std::filesystem::path& path) {
  const auto file = safetensors::File::open(path);
  const auto fail = [&](const std::string& what) {
    throw StateMismatch("optimizer state '" + path.string() + "': " + what);
  };
  const auto& meta = file.metadata();
  for (const char* key : {"format", "step", "skipped_steps", "options"})
    if (!meta.contains(key)) fail(std::string("metadata has no '") + key + "'; not a muon optimizer state");
  if (meta.at("format") != kStateFormat) fail("format '" + meta.at("format") + "' is not '" + kStateFormat + "'");
  SavedState state;
  try {
    state.options = options_from_json(io::parse_json(meta.at("options"), "its options"));
    state.step = std::stoll(meta.at("step"));
    state.skipped_steps = std::stoll(meta.at("skipped_steps"));
  } catch (const std::exception& e) {
    fail(std::string("metadata is unreadable: ") + e.what());
  }
  for (const std::string& name : file.names()) {
    const auto& info = file.info(name);
    if (info.dtype != safetensors::DType::F32)
      fail("tensor '" + name + "' has dtype " + std::string(safetensors::dtype_name(info.dtype)) + ", expected F32");
    state.tensors.push_back({name, info.shape, file.to_float(name)});
  }
  return state;
}

// Writes an optimizer's state (anything with export_state, such as muon::Optimizer) atomically.
template <class Optimizer>
void save_state(Optimizer& optimizer, const std::filesystem::path& path) {
  write_state_file(path, optimizer.export_state());
}

// Reads a file written by save_state into an optimizer over the same table (names, shapes,
// rules); see Optimizer::import_state for the checks.
template <class Optimizer>
void load_state(Optimizer& optimizer, const std::filesystem::path& path) {
  optimizer.import_state(read_state_file(path), path.string());
}

}  // namespace muon
