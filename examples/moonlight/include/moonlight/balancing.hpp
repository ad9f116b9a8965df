// moonlight/balancing.hpp: Moonlight's auxiliary-loss-free load balancing (docs/moonlight-architecture.md §6).
//
// After each optimizer step, every MoE layer's e_score_correction_bias moves by
//   b_i ← b_i + u·(sign(e_i) − mean_j sign(e_j)),   e_i = mean_j c_j − c_i,
// with c_i the tokens routed to expert i over the step's batch: e_i is positive when expert i is
// underloaded, so its bias (used only to choose experts) rises and it is chosen more. Subtracting
// the mean keeps Σ_i b_i constant; a common shift would never change the top-k anyway.
//
//   moonlight::ExpertLoad load;
//   loss_and_gradients(model, inputs, targets, grads, &load);  // per micro-batch, adds counts
//   moonlight::update_expert_bias(weights, config, load, 1e-3);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moonlight/config.hpp"
#include "moonlight/weights.hpp"
#include "muon/error.hpp"

namespace moonlight {

// Tokens routed to each expert: tokens[layer][expert]; empty rows for dense layers.
struct ExpertLoad {
  std::vector<std::vector<std::int64_t>> tokens;
};

inline void update_expert_bias(Weights& weights, const Config& c, const ExpertLoad& load, double u) {
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    const auto layer = static_cast<std::size_t>(l);
    if (layer >= load.tokens.size() || load.tokens[layer].size() != static_cast<std::size_t>(c.n_routed_experts)) {
      throw muon::ShapeMismatch("expert load has no counts for the " + std::to_string(c.n_routed_experts) +
                                " experts of MoE layer " + std::to_string(l) +
                                "; pass it to loss_and_gradients before updating the bias");
    }
    const std::vector<std::int64_t>& counts = load.tokens[layer];
    double mean_count = 0.0;
    for (const std::int64_t n : counts) mean_count += static_cast<double>(n);
    mean_count /= static_cast<double>(counts.size());
    std::vector<double> sign(counts.size());
    double mean_sign = 0.0;
    for (std::size_t e = 0; e < counts.size(); ++e) {
      const double error = mean_count - static_cast<double>(counts[e]);
      sign[e] = static_cast<double>((error > 0.0) - (error < 0.0));
      mean_sign += sign[e];
    }
    mean_sign /= static_cast<double>(counts.size());
    auto bias = weights.values("model.layers." + std::to_string(l) + ".mlp.gate.e_score_correction_bias");
    for (std::size_t e = 0; e < counts.size(); ++e) bias[e] += static_cast<float>(u * (sign[e] - mean_sign));
  }
}

}  // namespace moonlight
