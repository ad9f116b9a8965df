// muon/schedule.hpp: learning-rate schedules, as a multiplier of the base lr per step.
//
// lr_factor(schedule, k) is the factor for the step that follows k completed steps, so the first
// step of a warmup already moves (factor 1/warmup_steps, as in torch's LinearLR-style warmups).
//
//   muon::Options o{.lr = 4.2e-4, .schedule = muon::WarmupCosine{.warmup_steps = 100, .total_steps = 10000}};
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <variant>

#include "muon/error.hpp"
#include "muon/schema.hpp"

namespace muon {

// The most steps a schedule (and the step counter) is defined for: 2^53, where a step count is
// still exact in a double, which the schedules compute in. It also keeps every sum of step
// fields below int64's range. A saved state or an options field beyond it is refused.
inline constexpr std::int64_t kMaxStepCount = std::int64_t{1} << 53;
inline constexpr Limits kStepCount{.min = 0.0, .max = static_cast<double>(kMaxStepCount)};

struct ConstantLr {};

// Linear warmup to 1, then cosine decay to final_ratio at total_steps (held there afterwards).
struct WarmupCosine {
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;
  double final_ratio = 0.1;
};

// Warmup-stable-decay: linear warmup, a constant stretch, then a linear decay to final_ratio.
struct WarmupStableDecay {
  std::int64_t warmup_steps = 0;
  std::int64_t stable_steps = 0;
  std::int64_t decay_steps = 1;
  double final_ratio = 0.0;
};

using LrSchedule = std::variant<ConstantLr, WarmupCosine, WarmupStableDecay>;

namespace detail {
inline double warmup_factor(std::int64_t warmup_steps, std::int64_t completed) {
  return static_cast<double>(completed + 1) / static_cast<double>(warmup_steps);
}
inline double clamp01(double x) { return std::clamp(x, 0.0, 1.0); }
}  // namespace detail

[[nodiscard]] inline double lr_factor(const LrSchedule& schedule, std::int64_t completed) {
  struct Visitor {
    std::int64_t k;
    double operator()(const ConstantLr&) const { return 1.0; }
    double operator()(const WarmupCosine& s) const {
      if (k < s.warmup_steps) return detail::warmup_factor(s.warmup_steps, k);
      const double span = static_cast<double>(std::max<std::int64_t>(1, s.total_steps - s.warmup_steps));
      const double p = detail::clamp01(static_cast<double>(k - s.warmup_steps) / span);
      return s.final_ratio + (1.0 - s.final_ratio) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
    }
    double operator()(const WarmupStableDecay& s) const {
      if (k < s.warmup_steps) return detail::warmup_factor(s.warmup_steps, k);
      const std::int64_t into_decay = k - s.warmup_steps - s.stable_steps;
      if (into_decay < 0) return 1.0;
      const double p = detail::clamp01(static_cast<double>(into_decay + 1) /
                                         static_cast<double>(std::max<std::int64_t>(1, s.decay_steps)));
      return 1.0 - (1.0 - s.final_ratio) * p;
    }
  };
  return std::visit(Visitor{completed}, schedule);
}

template <>
struct Schema<ConstantLr> {
  static constexpr std::string_view kind = "constant";
  static constexpr auto fields = std::tuple{};
};
template <>
struct Schema<WarmupCosine> {
  static constexpr std::string_view kind = "warmup_cosine";
  static constexpr auto fields =
      std::tuple{field("warmup_steps", &WarmupCosine::warmup_steps, kStepCount),
                 field("total_steps", &WarmupCosine::total_steps, Limits{.min = 1, .max = kStepCount.max}),
                 field("final_ratio", &WarmupCosine::final_ratio, kFraction)};
  static void check(const WarmupCosine& s, const std::string& path) {
    if (s.warmup_steps >= s.total_steps)
      throw InvalidArgument(path + ".warmup_steps (" + std::to_string(s.warmup_steps) + ") must be below " + path +
                            ".total_steps (" + std::to_string(s.total_steps) + ")");
  }
};
template <>
struct Schema<WarmupStableDecay> {
  static constexpr std::string_view kind = "warmup_stable_decay";
  static constexpr auto fields =
      std::tuple{field("warmup_steps", &WarmupStableDecay::warmup_steps, kStepCount),
                 field("stable_steps", &WarmupStableDecay::stable_steps, kStepCount),
                 field("decay_steps", &WarmupStableDecay::decay_steps, Limits{.min = 1, .max = kStepCount.max}),
                 field("final_ratio", &WarmupStableDecay::final_ratio, kFraction)};
};

inline void validate(const LrSchedule& schedule) { validate_value(schedule, "LrSchedule", kAnyFinite); }

}  // namespace muon
