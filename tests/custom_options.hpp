// Options with every field away from its default, for the round trips that must lose nothing:
// the state file, JSON, ZeRO-1's agreement and load, the LibTorch adapter's archive and the
// Moonlight run config. fields_all_set() proves it: a field added to a table later and not set
// here makes the round-trip tests fail, and a member left out of its table fails the build
// (muon/schema.hpp). NorMuon is on, so a receiving optimizer must be built with it on
// (normuon_on): the switch decides the state buffers.
#pragma once

#include <muon/options.hpp>
#include <string>
#include <vector>

namespace muon::test {

inline Options custom_options() {
  Options o;
  o.lr = 3.5e-3;
  o.weight_decay = 0.025;
  o.muon = {.momentum = 0.9f,
            .momentum_form = MomentumForm::ema,
            .nesterov = false,
            .scale = ScaleMode::keller,
            .ns = {.schedule = {"custom", {{3.0, -3.5, 1.25}, {2.0, -1.5, 0.5}}, 1.01},
                   .steps = 6,
                   .eps = 3e-7f,
                   .eps_mode = NormEps::max,
                   .symmetric_products = false,
                   .method = NsMethod::gram,
                   .gram_restart = 3},
            .normuon = {.enabled = true, .beta2 = 0.9f, .eps = 1e-7f}};
  o.adamw = {.beta1 = 0.85f, .beta2 = 0.99f, .eps = 1e-6f};
  o.muon_group = {.lr = 0.02, .weight_decay = 0.0};
  o.adamw_group = {.lr = 1e-3, .weight_decay = 0.05};
  o.schedule = WarmupStableDecay{.warmup_steps = 3, .stable_steps = 7, .decay_steps = 5, .final_ratio = 0.25};
  o.max_grad_norm = 0.75;
  o.on_non_finite = OnNonFinite::skip;
  return o;
}

// Default options but for NorMuon, on: what receives a state saved with custom_options().
inline Options normuon_on() {
  Options o;
  o.muon.normuon.enabled = true;
  return o;
}

// The paths of the fields where a and b differ.
inline std::vector<std::string> differing_fields(const Options& a, const Options& b) {
  return muon::differing_fields(a, b, "Options");
}

// The paths of the fields of `o` that still hold their default value.
inline std::vector<std::string> fields_at_default(const Options& o) {
  std::vector<std::string> same;
  const auto set = field_fingerprints(o, "Options"), defaults = field_fingerprints(Options{}, "Options");
  for (std::size_t i = 0; i < set.size(); ++i)
    if (set[i].hash == defaults[i].hash) same.push_back(set[i].path);
  return same;
}

}  // namespace muon::test
