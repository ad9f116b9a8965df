// moonlight/parameter_count.hpp: how many parameters a config implies, in all and per token,
// from the config alone (nothing is allocated).
//
// The counts are sums over `tensor_layout(c)` (weights.hpp), the one list of the model's tensors.
// "Embeddings" are the embed_tokens table and, when untied, lm_head. "Active" is what one token
// uses: every tensor except the embeddings, with only num_experts_per_tok of each MoE layer's
// n_routed_experts routed experts (the shared experts, the router gate and its bias all count).
// For Moonlight-16B-A3B: 15,960,110,208 in all, 15,289,021,568 without the embeddings,
// 2,243,687,552 active ("2.24B activated"), 2,579,231,872 active with lm_head.
//
//   const moonlight::ParameterCount n = moonlight::count_parameters(config);
//   n.active_with_head();  // + the output projection every token also runs
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "moonlight/config.hpp"
#include "moonlight/weights.hpp"
#include "muon/error.hpp"
#include "muon/tensor.hpp"

namespace moonlight {

struct ParameterCount {
  std::int64_t total = 0;
  std::int64_t embeddings = 0;      // embed_tokens, plus lm_head when untied
  std::int64_t head = 0;            // the output projection: lm_head, or embed_tokens when tied
  std::int64_t routed_experts = 0;  // all routed experts of all MoE layers
  std::int64_t routed_active = 0;   // num_experts_per_tok of them per MoE layer
  std::int64_t tensors = 0;         // in a checkpoint

  [[nodiscard]] std::int64_t without_embeddings() const { return total - embeddings; }
  [[nodiscard]] std::int64_t active() const { return without_embeddings() - routed_experts + routed_active; }
  [[nodiscard]] std::int64_t active_with_head() const { return active() + head; }
};

inline ParameterCount count_parameters(const Config& c) {
  ParameterCount n;
  for (const TensorSpec& t : tensor_layout(c)) {
    // Config's bounds keep each tensor's count far below 2^63, but not their sum (as in Weights).
    const std::int64_t size = muon::numel(t.shape);
    if (n.total > std::numeric_limits<std::int64_t>::max() / 2 - size) {
      throw muon::InvalidArgument("the config implies more than 2^62 parameters (at tensor '" + t.name +
                                  "'); check its size fields");
    }
    n.total += size;
    ++n.tensors;
    if (t.role == muon::Role::embedding || t.role == muon::Role::head) n.embeddings += size;
    if (t.role == muon::Role::head || (t.role == muon::Role::embedding && c.tie_word_embeddings)) n.head += size;
    if (t.name.find(".mlp.experts.") != std::string::npos) n.routed_experts += size;
  }
  // Every routed expert of a layer has the same size, so K of E is an exact fraction.
  n.routed_active = n.routed_experts / c.n_routed_experts * c.num_experts_per_tok;
  return n;
}

}  // namespace moonlight
