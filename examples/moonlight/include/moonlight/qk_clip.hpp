// moonlight/qk_clip.hpp: QK-clip for MLA, as Kimi K2 defines it (MuonClip, arXiv 2507.20534 §2.1):
// the per-head maximum attention logit of a training step, and the weight rescaling that caps it.
//
// The training forward records, per layer and head, the largest pre-softmax logit S (softmax scale
// included, causal mask respected; layers/attention.hpp), and `MaxLogits` combines them with max
// over threads, micro-batches and ranks (max is exact and order-free, so every rank sees the same
// bits). After the optimizer step, every head with S > τ is rescaled with γ = τ/S: its q_nope rows
// (q_proj, or q_b_proj with q LoRA) and its k_nope rows (kv_b_proj) by √γ, its q_rope rows by γ.
// A logit is q_nope·k_nope + q_rope·k_rope, so each of its terms, and the logit, scales by γ: the
// head's maximum becomes τ. The shared rope key (kv_a_proj) serves every head and stays; so do the
// values, the other heads and the optimizer state. The row scaling itself is muon::scale_row_blocks.
//
//   moonlight::MaxLogits seen = moonlight::MaxLogits::empty(config);   // filled by the passes
//   const std::int64_t clipped = moonlight::qk_clip(backend, weights, config, seen, 100.0);
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "moonlight/config.hpp"
#include "moonlight/weights.hpp"
#include "muon/backend.hpp"
#include "muon/error.hpp"
#include "muon/row_scale.hpp"

namespace moonlight {

// A per-layer, per-head maximum of attention logits; -∞ where no logit was seen yet.
struct MaxLogits {
  std::vector<std::vector<double>> heads;  // [layer][head]

  [[nodiscard]] static MaxLogits empty(const Config& c) {
    return {std::vector<std::vector<double>>(static_cast<std::size_t>(c.num_hidden_layers),
                                             std::vector<double>(static_cast<std::size_t>(c.num_attention_heads),
                                                                 -std::numeric_limits<double>::infinity()))};
  }
  // max that keeps a NaN whichever side it is on, so that the result never depends on the order.
  [[nodiscard]] static double max(double a, double b) { return std::isnan(a) || b < a ? a : b; }

  template <class S>
  void add(std::size_t layer, std::span<const S> per_head) {
    for (std::size_t h = 0; h < per_head.size(); ++h) heads[layer][h] = max(heads[layer][h], static_cast<double>(per_head[h]));
  }
  void add(const MaxLogits& other) {
    for (std::size_t l = 0; l < heads.size(); ++l) add(l, std::span<const double>(other.heads[l]));
  }
  [[nodiscard]] double overall() const {
    double m = -std::numeric_limits<double>::infinity();
    for (const auto& layer : heads)
      for (const double s : layer) m = max(m, s);
    return m;
  }
  // Flat, layer by layer, for a collective; and back.
  [[nodiscard]] std::vector<double> flat() const {
    std::vector<double> out;
    for (const auto& layer : heads) out.insert(out.end(), layer.begin(), layer.end());
    return out;
  }
  void assign_flat(std::span<const double> values) {
    std::size_t k = 0;
    for (auto& layer : heads)
      for (double& s : layer) s = values[k++];
  }
};

// The name of the weight that holds the heads' query rows.
[[nodiscard]] inline std::string query_weight_name(const Config& c, std::int64_t layer) {
  return "model.layers." + std::to_string(layer) + ".self_attn." + (c.q_lora_rank ? "q_b_proj" : "q_proj") + ".weight";
}

// Rescales every head whose maximum logit in `seen` exceeds tau (see the file comment), in
// `backend`'s memory, where `weights`' values live; returns the number of heads clipped. τ = +∞
// clips nothing. A NaN maximum clips nothing (NaN > τ is false): the step that saw it is rejected
// or skipped by the optimizer's guard anyway.
template <muon::Backend B>
std::int64_t qk_clip(B& backend, Weights& weights, const Config& c, const MaxLogits& seen, double tau) {
  if (!(tau > 0.0)) throw muon::InvalidArgument("qk_clip: tau must be positive, got " + std::to_string(tau));
  const std::int64_t H = c.num_attention_heads, dn = c.qk_nope_head_dim, dv = c.v_head_dim, dqk = c.qk_head_dim();
  if (seen.heads.size() != static_cast<std::size_t>(c.num_hidden_layers))
    throw muon::ShapeMismatch("qk_clip: the maxima have " + std::to_string(seen.heads.size()) + " layers; the model has " +
                              std::to_string(c.num_hidden_layers));
  std::int64_t clipped = 0;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::vector<double>& layer = seen.heads[static_cast<std::size_t>(l)];
    if (layer.size() != static_cast<std::size_t>(H))
      throw muon::ShapeMismatch("qk_clip: layer " + std::to_string(l) + " has " + std::to_string(layer.size()) +
                                " maxima; the model has " + std::to_string(H) + " heads");
    std::vector<muon::RowBlockScale> q_rows, k_rows;
    for (std::int64_t h = 0; h < H; ++h) {
      const double s = layer[static_cast<std::size_t>(h)];
      if (!(s > tau)) continue;
      const double gamma = tau / s;
      const auto root = static_cast<float>(std::sqrt(gamma));
      q_rows.push_back({.first_row = h * dqk, .rows = dn, .factor = root});
      q_rows.push_back({.first_row = h * dqk + dn, .rows = c.qk_rope_head_dim, .factor = static_cast<float>(gamma)});
      k_rows.push_back({.first_row = h * (dn + dv), .rows = dn, .factor = root});
      ++clipped;
    }
    if (q_rows.empty()) continue;
    const std::string kv_b = "model.layers." + std::to_string(l) + ".self_attn.kv_b_proj.weight";
    const std::string q = query_weight_name(c, l);
    muon::scale_row_blocks(backend, weights.values(q), weights.spec(q).shape.back(), q_rows);
    muon::scale_row_blocks(backend, weights.values(kv_b), weights.spec(kv_b).shape.back(), k_rows);
  }
  return clipped;
}

}  // namespace moonlight
