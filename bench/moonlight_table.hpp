// bench/moonlight_table.hpp: a Moonlight-shaped parameter table at 1/8 width, shared by the
// optimizer-step benchmarks: embedding, head, a norm, MLA and dense matrices, an 8-expert stack.
#pragma once

#include <muon/parameter.hpp>
#include <string>
#include <vector>

namespace muon::bench {

struct TensorSpec {
  std::string name;
  Role role;
  Shape shape;
};

inline const std::vector<TensorSpec>& moonlight_table() {
  static const std::vector<TensorSpec> table{{"embed", Role::embedding, {4096, 256}},
                                             {"q_proj", Role::matrix, {384, 256}},
                                             {"kv_a", Role::matrix, {72, 256}},
                                             {"kv_b", Role::matrix, {512, 64}},
                                             {"o_proj", Role::matrix, {256, 256}},
                                             {"experts.gate_up", Role::matrix, {8, 352, 256}},
                                             {"experts.down", Role::matrix, {8, 256, 176}},
                                             {"norm", Role::norm, {256}},
                                             {"head", Role::head, {4096, 256}}};
  return table;
}

}  // namespace muon::bench
