// muon/state.hpp: the optimizer state on the host, as plain tensors.
//
// An optimizer exports its state as one tensor per buffer, named "<parameter>/<buffer>"
// (momentum; exp_avg and exp_avg_sq), with the step counts and the options; and imports it back,
// checking it against its parameter table. Keyed by parameter name only, so a state exported by
// the single-process optimizer imports into a ZeRO-1 run at any world size and back. Writing it
// to a file is muon/state_file.hpp's job, which the core does not include.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

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

// The names of the state buffers a parameter following `rule` has, in export order.
[[nodiscard]] inline std::vector<const char*> state_buffer_names(Rule rule) {
  if (rule == Rule::muon) return {"momentum"};
  return {"exp_avg", "exp_avg_sq"};
}

}  // namespace muon
