// muon/options.hpp: the optimizer's hyper-parameters, with Moonlight's defaults.
//
// One lr and one weight decay are shared by Muon and AdamW (Moonlight's convention: the RMS
// matching of the Muon update lets it reuse AdamW's values); `muon_group` and `adamw_group`
// override them per rule.
//
//   muon::Options o{.lr = 4.2e-4, .weight_decay = 0.1, .max_grad_norm = 1.0};
#pragma once

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "muon/adamw_rule.hpp"
#include "muon/error.hpp"
#include "muon/muon_rule.hpp"
#include "muon/schedule.hpp"
#include "muon/schema.hpp"

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

template <>
struct Schema<GroupOverrides> {
  static constexpr auto fields = std::tuple{field("lr", &GroupOverrides::lr, kNonNegative),
                                            field("weight_decay", &GroupOverrides::weight_decay, kNonNegative)};
};
template <>
struct EnumNames<OnNonFinite> {
  static constexpr std::array names{std::pair{OnNonFinite::fail, "fail"}, std::pair{OnNonFinite::skip, "skip"}};
};
template <>
struct Schema<Options> {
  static constexpr auto fields = std::tuple{field("lr", &Options::lr, kNonNegative),
                                            field("weight_decay", &Options::weight_decay, kNonNegative),
                                            field("muon", &Options::muon),
                                            field("adamw", &Options::adamw),
                                            field("muon_group", &Options::muon_group),
                                            field("adamw_group", &Options::adamw_group),
                                            field("schedule", &Options::schedule),
                                            field("max_grad_norm", &Options::max_grad_norm, kNonNegative),
                                            field("on_non_finite", &Options::on_non_finite)};
};

// Throws InvalidArgument naming the first field out of range ("Options.muon.ns.steps ...").
inline void validate(const Options& o) { validate_fields(o, "Options"); }

}  // namespace muon
