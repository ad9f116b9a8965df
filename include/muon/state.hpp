// muon/state.hpp: the optimizer state on the host, as plain tensors.
//
// An optimizer exports its state as one tensor per buffer, named "<parameter>/<buffer>"
// (momentum, and normuon_v with NorMuon on; exp_avg and exp_avg_sq), with the step counts and the
// options; and imports it back, checking it against its parameter table. Keyed by parameter name
// only, so a state exported by the single-process optimizer imports into a ZeRO-1 run at any world
// size and back. Writing it to a file is muon/state_file.hpp's job, which the core does not include.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "muon/error.hpp"
#include "muon/options.hpp"
#include "muon/parameter.hpp"
#include "muon/tensor.hpp"

namespace muon {

// One state buffer on the host.
struct StateTensor {
  std::string name;
  Shape shape;
  std::vector<float> values;
};

// Everything an optimizer needs to resume bit-identically.
struct SavedState {
  std::int64_t step = 0;
  std::int64_t skipped_steps = 0;
  Options options{};
  std::vector<StateTensor> tensors;
};

// NorMuon's second moment: one value per row of each matrix (muon_rule.hpp).
inline constexpr const char* kNorMuonV = "normuon_v";

// The names of the state buffers a parameter following `rule` has, in export order.
[[nodiscard]] inline std::vector<const char*> state_buffer_names(Rule rule, const MuonOptions& muon) {
  if (rule == Rule::muon) {
    if (muon.normuon.enabled) return {"momentum", kNorMuonV};
    return {"momentum"};
  }
  return {"exp_avg", "exp_avg_sq"};
}

// Parameter elements per element of a buffer: a per-row buffer (normuon_v) has one value per
// `cols` elements, the others one per element. A matrix's rows are whole, so a range of whole
// matrices of the parameter maps onto the range of the buffer divided by this.
[[nodiscard]] inline std::int64_t state_stride(std::string_view buffer, const Shape& param) {
  return buffer == kNorMuonV ? param.back() : 1;
}

// NorMuon's switch decides which buffers exist, so it is fixed for an optimizer's lifetime:
// InvalidArgument when `next` (new options, or a saved state's) turns it the other way.
inline void check_state_layout(const MuonOptions& now, const MuonOptions& next) {
  if (now.normuon.enabled == next.normuon.enabled) return;
  throw InvalidArgument(std::string("MuonOptions.normuon.enabled cannot change from ") +
                        (now.normuon.enabled ? "true to false" : "false to true") +
                        " in a built optimizer: it decides the state buffers (normuon_v); build the optimizer with it");
}

// A buffer's shape: the parameter's, without the last dimension for a per-row buffer
// ([rows] for a matrix, [experts, rows] for a stack).
[[nodiscard]] inline Shape state_shape(std::string_view buffer, const Shape& param) {
  return buffer == kNorMuonV ? Shape(param.begin(), param.end() - 1) : param;
}

}  // namespace muon
