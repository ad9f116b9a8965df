// muon/adamw_rule.hpp: AdamW with torch.optim.AdamW's semantics, for the parameters Muon does not
// take (embeddings, the LM head, norms, biases).
//
// W ← W·(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; W ← W − lr·m̂/(√v̂ + ε), with the bias
// corrections m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ). Moonlight's defaults: β = (0.9, 0.95), ε = 1e-8.
#pragma once

#include <span>

#include "muon/backend.hpp"
#include "muon/schema.hpp"

namespace muon {

struct AdamWOptions {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
};
template <>
struct Schema<AdamWOptions> {
  static constexpr auto fields =
      std::tuple{field("beta1", &AdamWOptions::beta1, kUnitInterval), field("beta2", &AdamWOptions::beta2, kUnitInterval),
                 field("eps", &AdamWOptions::eps, kPositive)};
};

struct AdamWSlot {
  std::span<float> value;
  std::span<const float> grad;
  std::span<float> exp_avg;
  std::span<float> exp_avg_sq;
};

// The step's lr, decay, bias corrections and clipping factor are read from `values` (backend
// memory) when the operation runs.
template <Backend B>
void adamw_update(B& backend, const AdamWSlot& s, const AdamWOptions& o, const StepValues* values) {
  backend.adamw(s.value, s.grad, s.exp_avg, s.exp_avg_sq, AdamWStep{o.beta1, o.beta2, o.eps, values});
}

}  // namespace muon
