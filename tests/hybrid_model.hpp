// A small hybrid parameter table in host memory, for tests of the optimizer's step: a Muon matrix,
// a 3-D expert stack, an embedding and a norm gain (AdamW), with fixed gradients.
#pragma once

#include <muon/parameter.hpp>
#include <vector>

namespace muon::test {

// n values in [-0.5, 0.5) from a linear congruential generator: the same on every platform.
inline std::vector<float> lcg_values(std::size_t n, unsigned seed) {
  std::vector<float> v(n);
  unsigned s = seed;
  for (float& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / 16777216.0f - 0.5f;
  }
  return v;
}

struct HybridModel {
  std::vector<float> w = lcg_values(24 * 40, 1), experts = lcg_values(3 * 16 * 24, 2), emb = lcg_values(50 * 8, 3),
                     norm = std::vector<float>(8, 1.0f);
  std::vector<float> dw = lcg_values(w.size(), 4), dexperts = lcg_values(experts.size(), 5),
                     demb = lcg_values(emb.size(), 6), dnorm = lcg_values(norm.size(), 7);
  std::vector<Parameter> table() {
    return {{"w", Role::matrix, {w.data(), {24, 40}}, {dw.data(), {24, 40}}},
            {"experts", Role::matrix, {experts.data(), {3, 16, 24}}, {dexperts.data(), {3, 16, 24}}},
            {"emb", Role::embedding, {emb.data(), {50, 8}}, {demb.data(), {50, 8}}},
            {"norm", Role::norm, {norm.data(), {8}}, {dnorm.data(), {8}}}};
  }
};

}  // namespace muon::test
