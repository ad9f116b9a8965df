// tests/zero_support.hpp: a small Moonlight-shaped model whose gradients are exact in any
// summation order, for comparing the ZeRO-1 optimizer with the single-process one bit for bit.
//
// Every gradient element is k/256 with |k| <= 256: a sum of a few of them is exact in float
// whatever order the engine adds them in, so the mean each rank receives, sum · (1/N), is the
// same float the reference computes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <muon/parameter.hpp>
#include <random>
#include <string>
#include <vector>

namespace muon::test {

struct ZeroModel {
  struct Tensor {
    std::string name;
    Role role;
    Shape shape;
    std::vector<float> value, grad;
  };
  std::vector<Tensor> tensors;

  explicit ZeroModel(bool alternate_shape = false) {
    const std::vector<std::pair<std::string, std::pair<Role, Shape>>> specs{
        {"model.embed_tokens.weight", {Role::embedding, {40, 16}}},
        {"model.layers.0.self_attn.q_proj.weight", {Role::matrix, {24, 16}}},
        {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight", {Role::matrix, {alternate_shape ? 10 : 12, 16}}},
        {"model.layers.0.self_attn.kv_b_proj.weight", {Role::matrix, {32, 8}}},
        {"model.layers.0.mlp.experts", {Role::matrix, {6, 12, 16}}},
        {"model.layers.0.mlp.shared_experts.down_proj.weight", {Role::matrix, {16, 12}}},
        {"model.layers.0.input_layernorm.weight", {Role::norm, {16}}},
        {"model.norm.weight", {Role::norm, {16}}},
        {"lm_head.weight", {Role::head, {40, 16}}}};
    std::uint32_t seed = 1;
    for (const auto& [name, spec] : specs) {
      const auto& [role, shape] = spec;
      auto value = role == Role::norm ? std::vector<float>(static_cast<std::size_t>(numel(shape)), 1.0f)
                                      : normal_values(static_cast<std::size_t>(numel(shape)), seed);
      tensors.push_back({name, role, shape, value, std::vector<float>(value.size(), 0.0f)});
      ++seed;
    }
  }

  std::vector<Parameter> table() {
    std::vector<Parameter> out;
    for (Tensor& t : tensors) out.push_back({t.name, t.role, {t.value.data(), t.shape}, {t.grad.data(), t.shape}});
    return out;
  }
  [[nodiscard]] std::vector<std::vector<float>> values() const {
    std::vector<std::vector<float>> out;
    for (const Tensor& t : tensors) out.push_back(t.value);
    return out;
  }
  void set_values(const std::vector<std::vector<float>>& values) {
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].value = values[i];
  }

  // Rank `rank`'s gradient at step `step`: k/256 with k from a hash of (step, rank, element).
  void set_rank_gradients(std::int64_t step, int rank) {
    std::uint64_t i = 0;
    for (Tensor& t : tensors)
      for (float& g : t.grad) g = dyadic(step, rank, i++);
  }
  // What a ZeRO-1 reduce-scatter (avg) over `world` ranks delivers: fl(Σ_r g_r) · fl(1/world).
  void set_mean_gradients(std::int64_t step, int world) {
    std::uint64_t i = 0;
    for (Tensor& t : tensors)
      for (float& g : t.grad) {
        float sum = 0.0f;
        for (int r = 0; r < world; ++r) sum += dyadic(step, r, i);
        g = sum * (1.0f / static_cast<float>(world));
        ++i;
      }
  }

  static std::vector<float> normal_values(std::size_t n, std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 0.1f);
    std::vector<float> out(n);
    for (float& v : out) v = normal(gen);
    return out;
  }

  static float dyadic(std::int64_t step, int rank, std::uint64_t element) {
    std::uint64_t h = (static_cast<std::uint64_t>(step) * 1000003u + static_cast<std::uint64_t>(rank)) * 2654435761u +
                      element * 40503u;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return static_cast<float>(static_cast<int>(h % 513) - 256) / 256.0f;
  }
};

inline double max_abs_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  double d = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i)
    for (std::size_t j = 0; j < a[i].size(); ++j) d = std::max(d, std::abs(double{a[i][j]} - double{b[i][j]}));
  return d;
}

}  // namespace muon::test
