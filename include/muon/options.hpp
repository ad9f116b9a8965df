// muon/options.hpp: the optimizer's hyper-parameters, with Moonlight's defaults.
//
// One lr and one weight decay are shared by Muon and AdamW (Moonlight's convention: the RMS
// matching of the Muon update lets it reuse AdamW's values); `muon_group` and `adamw_group`
// override them per rule.
//
//   muon::Options o{.lr = 4.2e-4, .weight_decay = 0.1, .max_grad_norm = 1.0};
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include "muon/adamw_rule.hpp"
#include "muon/error.hpp"
#include "muon/muon_rule.hpp"
#include "muon/schedule.hpp"

namespace muon {

struct GroupOverrides {
  std::optional<double> lr{};
  std::optional<double> weight_decay{};
};

// What a step does with a NaN or Inf gradient: throw NonFiniteGradient, or skip and count it.
// Either way nothing changes.
enum class OnNonFinite { fail, skip };

struct Options {
  double lr = 1e-3;
  double weight_decay = 0.1;
  MuonOptions muon{};
  AdamWOptions adamw{};
  GroupOverrides muon_group{};
  GroupOverrides adamw_group{};
  LrSchedule schedule = ConstantLr{};
  double max_grad_norm = 0.0;  // global L2 norm over all parameters; 0 turns clipping off
  OnNonFinite on_non_finite = OnNonFinite::fail;
};

inline void validate(const Options& o) {
  const auto finite_nonneg = [](double v, const std::string& field) {
    if (!(v >= 0.0) || !std::isfinite(v))
      throw InvalidArgument("Options." + field + " must be finite and >= 0, got " + std::to_string(v));
  };
  const auto in_unit = [](double v, const std::string& field) {
    if (!(v >= 0.0 && v < 1.0))
      throw InvalidArgument("Options." + field + " must be in [0, 1), got " + std::to_string(v));
  };
  finite_nonneg(o.lr, "lr");
  finite_nonneg(o.weight_decay, "weight_decay");
  finite_nonneg(o.max_grad_norm, "max_grad_norm");
  for (const auto& [g, name] : {std::pair{&o.muon_group, "muon_group"}, {&o.adamw_group, "adamw_group"}}) {
    if (g->lr) finite_nonneg(*g->lr, std::string(name) + ".lr");
    if (g->weight_decay) finite_nonneg(*g->weight_decay, std::string(name) + ".weight_decay");
  }
  in_unit(o.muon.momentum, "muon.momentum");
  in_unit(o.adamw.beta1, "adamw.beta1");
  in_unit(o.adamw.beta2, "adamw.beta2");
  if (!(o.adamw.eps > 0.0f)) throw InvalidArgument("Options.adamw.eps must be > 0");
  validate(o.muon.ns);
  validate(o.schedule);
}

}  // namespace muon
