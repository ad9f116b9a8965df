// muon/options_json.hpp: Options to and from JSON, so a checkpoint carries its hyper-parameters.
//
// Every field is written, including the Newton–Schulz schedule's triples, so a custom schedule
// survives a save and load. Floats go through double and back, which round-trips exactly.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "muon/error.hpp"
#include "muon/options.hpp"

namespace muon {

namespace internal {

template <class Enum, std::size_t N>
std::string enum_name(Enum value, const std::array<std::pair<Enum, const char*>, N>& names) {
  for (const auto& [v, n] : names)
    if (v == value) return n;
  return "?";
}
template <class Enum, std::size_t N>
Enum enum_value(const std::string& text, const std::array<std::pair<Enum, const char*>, N>& names,
                const char* field) {
  for (const auto& [v, n] : names)
    if (text == n) return v;
  throw InvalidArgument(std::string("options field '") + field + "' has unknown value '" + text + "'");
}

inline constexpr std::array kMomentumForms{std::pair{MomentumForm::sum, "sum"}, std::pair{MomentumForm::ema, "ema"}};
inline constexpr std::array kNormEps{std::pair{NormEps::add, "add"}, std::pair{NormEps::max, "max"}};
inline constexpr std::array kScaleModes{std::pair{ScaleMode::match_adamw_rms, "match_adamw_rms"},
                                        std::pair{ScaleMode::keller, "keller"}, std::pair{ScaleMode::none, "none"}};
inline constexpr std::array kOnNonFinite{std::pair{OnNonFinite::fail, "fail"}, std::pair{OnNonFinite::skip, "skip"}};

inline nlohmann::json group_json(const GroupOverrides& g) {
  nlohmann::json j = nlohmann::json::object();
  if (g.lr) j["lr"] = *g.lr;
  if (g.weight_decay) j["weight_decay"] = *g.weight_decay;
  return j;
}
inline GroupOverrides group_from_json(const nlohmann::json& j) {
  GroupOverrides g;
  if (j.contains("lr")) g.lr = j.at("lr").get<double>();
  if (j.contains("weight_decay")) g.weight_decay = j.at("weight_decay").get<double>();
  return g;
}

inline nlohmann::json schedule_json(const LrSchedule& s) {
  if (const auto* c = std::get_if<WarmupCosine>(&s))
    return {{"kind", "warmup_cosine"}, {"warmup_steps", c->warmup_steps}, {"total_steps", c->total_steps},
            {"final_ratio", c->final_ratio}};
  if (const auto* w = std::get_if<WarmupStableDecay>(&s))
    return {{"kind", "warmup_stable_decay"}, {"warmup_steps", w->warmup_steps},
            {"stable_steps", w->stable_steps}, {"decay_steps", w->decay_steps}, {"final_ratio", w->final_ratio}};
  return {{"kind", "constant"}};
}
inline LrSchedule schedule_from_json(const nlohmann::json& j) {
  const auto kind = j.at("kind").get<std::string>();
  if (kind == "constant") return ConstantLr{};
  if (kind == "warmup_cosine")
    return WarmupCosine{j.at("warmup_steps").get<std::int64_t>(), j.at("total_steps").get<std::int64_t>(),
                        j.at("final_ratio").get<double>()};
  if (kind == "warmup_stable_decay")
    return WarmupStableDecay{j.at("warmup_steps").get<std::int64_t>(), j.at("stable_steps").get<std::int64_t>(),
                             j.at("decay_steps").get<std::int64_t>(), j.at("final_ratio").get<double>()};
  throw InvalidArgument("options field 'schedule.kind' has unknown value '" + kind + "'");
}

}  // namespace internal

[[nodiscard]] inline nlohmann::json to_json(const Options& o) {
  using namespace internal;
  nlohmann::json triples = nlohmann::json::array();
  for (const auto& t : o.muon.ns.schedule.triples) triples.push_back({t.a, t.b, t.c});
  return {
      {"lr", o.lr},
      {"weight_decay", o.weight_decay},
      {"muon",
       {{"momentum", o.muon.momentum},
        {"momentum_form", enum_name(o.muon.momentum_form, kMomentumForms)},
        {"nesterov", o.muon.nesterov},
        {"scale", enum_name(o.muon.scale, kScaleModes)},
        {"ns",
         {{"schedule", {{"name", o.muon.ns.schedule.name}, {"triples", triples},
                        {"norm_scale", o.muon.ns.schedule.norm_scale}}},
          {"steps", o.muon.ns.steps},
          {"eps", o.muon.ns.eps},
          {"eps_mode", enum_name(o.muon.ns.eps_mode, kNormEps)},
          {"symmetric_products", o.muon.ns.symmetric_products}}}}},
      {"adamw", {{"beta1", o.adamw.beta1}, {"beta2", o.adamw.beta2}, {"eps", o.adamw.eps}}},
      {"muon_group", group_json(o.muon_group)},
      {"adamw_group", group_json(o.adamw_group)},
      {"schedule", schedule_json(o.schedule)},
      {"max_grad_norm", o.max_grad_norm},
      {"on_non_finite", enum_name(o.on_non_finite, kOnNonFinite)},
  };
}

// Throws InvalidArgument naming the field when the JSON is not a complete Options.
[[nodiscard]] inline Options options_from_json(const nlohmann::json& j) {
  using namespace internal;
  try {
    Options o;
    o.lr = j.at("lr").get<double>();
    o.weight_decay = j.at("weight_decay").get<double>();
    const auto& m = j.at("muon");
    o.muon.momentum = m.at("momentum").get<float>();
    o.muon.momentum_form = enum_value(m.at("momentum_form").get<std::string>(), kMomentumForms, "muon.momentum_form");
    o.muon.nesterov = m.at("nesterov").get<bool>();
    o.muon.scale = enum_value(m.at("scale").get<std::string>(), kScaleModes, "muon.scale");
    const auto& ns = m.at("ns");
    o.muon.ns.schedule.name = ns.at("schedule").at("name").get<std::string>();
    o.muon.ns.schedule.norm_scale = ns.at("schedule").at("norm_scale").get<double>();
    o.muon.ns.schedule.triples.clear();
    for (const auto& t : ns.at("schedule").at("triples"))
      o.muon.ns.schedule.triples.push_back({t.at(0).get<double>(), t.at(1).get<double>(), t.at(2).get<double>()});
    o.muon.ns.steps = ns.at("steps").get<int>();
    o.muon.ns.eps = ns.at("eps").get<float>();
    o.muon.ns.eps_mode = enum_value(ns.at("eps_mode").get<std::string>(), kNormEps, "muon.ns.eps_mode");
    o.muon.ns.symmetric_products = ns.at("symmetric_products").get<bool>();
    const auto& a = j.at("adamw");
    o.adamw = {a.at("beta1").get<float>(), a.at("beta2").get<float>(), a.at("eps").get<float>()};
    o.muon_group = group_from_json(j.at("muon_group"));
    o.adamw_group = group_from_json(j.at("adamw_group"));
    o.schedule = schedule_from_json(j.at("schedule"));
    o.max_grad_norm = j.at("max_grad_norm").get<double>();
    o.on_non_finite = enum_value(j.at("on_non_finite").get<std::string>(), kOnNonFinite, "on_non_finite");
    validate(o);
    return o;
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(std::string("saved options are incomplete or mistyped: ") + e.what());
  }
}

}  // namespace muon
