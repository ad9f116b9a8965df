// muon/step_driver.hpp: the one path every step takes before any parameter changes.
//
// StepDriver owns what is decided once per step, whatever the number of steppers (one for
// muon::Optimizer, one per bucket in ZeRO-1, one per parameter group in the LibTorch adapter):
// the options, the single step counter, the non-finite guard, the clipping factor and the
// schedule. It writes the step's numbers (StepValues, muon/backend.hpp) into a host image and
// copies that image into a block in the backend's memory with one `upload`; the steppers'
// operations read the block when they run. So a step recorded once (a CUDA graph) replays
// correctly: begin_step refreshes the image, the replay copies it and runs the kernels.
//
//   muon::StepDriver<muon::EigenBackend> driver(backend, options);
//   const muon::StepReport r = driver.begin_step(stepper.check_gradients());
//   if (!r.skipped) { driver.upload(); stepper.apply(driver.values()); }
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "muon/backend.hpp"
#include "muon/error.hpp"
#include "muon/options.hpp"
#include "muon/schedule.hpp"

namespace muon {

// What a read of the gradients found: their global squared norm and the first parameter whose
// gradient holds NaN or Inf, if any.
struct GradientCheck {
  double sum_squares = 0.0;                 // over all gradients (meaningless if non_finite)
  std::optional<std::string> non_finite{};  // the first parameter whose gradient holds NaN or Inf

  // The check of two sets of gradients read in turn (this one first).
  void add(const GradientCheck& next) {
    if (non_finite) return;
    if (next.non_finite) non_finite = next.non_finite;
    sum_squares += next.sum_squares;
  }
};

// What one step did.
struct StepReport {
  std::int64_t step = 0;    // completed steps after this one
  double grad_norm = 0.0;   // global L2 norm of the gradients, before clipping
  double grad_scale = 1.0;  // the clipping factor applied (1 when not clipped)
  double lr = 0.0;          // base lr times the schedule factor
  bool skipped = false;     // a non-finite gradient was skipped (OnNonFinite::skip)
};

// The rates of one group of parameters, from which the driver computes its StepValues entry.
struct GroupRates {
  double lr = 1e-3;
  double weight_decay = 0.1;
  AdamWOptions adamw{};  // β₁ and β₂ give AdamW's bias corrections
};

// The two entries of muon::Options: Muon's parameters read entry 0, AdamW's entry 1, each with
// its group's overrides of the shared lr and weight decay.
inline constexpr std::size_t kMuonEntry = 0;
inline constexpr std::size_t kAdamWEntry = 1;
[[nodiscard]] inline std::array<GroupRates, 2> rule_rates(const Options& o) {
  return {GroupRates{o.muon_group.lr.value_or(o.lr), o.muon_group.weight_decay.value_or(o.weight_decay), o.adamw},
          GroupRates{o.adamw_group.lr.value_or(o.lr), o.adamw_group.weight_decay.value_or(o.weight_decay), o.adamw}};
}

// One group's numbers for the step t (1-based) after `completed` steps; float arithmetic where the
// rules have always rounded (lr and decay), double for the bias corrections.
[[nodiscard]] inline StepValues step_values(const GroupRates& r, double schedule_factor, double grad_scale,
                                            std::int64_t t) {
  const auto lr = static_cast<float>(r.lr * schedule_factor);
  const auto weight_decay = static_cast<float>(r.weight_decay);
  const auto td = static_cast<double>(t);
  return {.lr = lr,
          .decay = 1.0f - lr * weight_decay,
          .grad_scale = static_cast<float>(grad_scale),
          .step = static_cast<float>(t),
          .adamw_step_size = lr / static_cast<float>(1.0 - std::pow(double{r.adamw.beta1}, td)),
          .adamw_bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(double{r.adamw.beta2}, td)))};
}

// A saved state's step counts must lie in [0, kMaxStepCount]; StateMismatch naming `source` if not.
inline void check_step_counts(std::int64_t step, std::int64_t skipped, const std::string& source) {
  for (const auto& [value, name] : {std::pair{step, "step"}, std::pair{skipped, "skipped_steps"}})
    if (value < 0 || value > kMaxStepCount)
      throw StateMismatch("optimizer state '" + source + "': " + name + " is " + std::to_string(value) +
                          ", outside [0, 2^53]");
}

template <Backend B>
class StepDriver {
 public:
  // `entries`: the groups of the block (2 for muon::Options' Muon and AdamW groups).
  StepDriver(B backend, Options options, std::size_t entries = 2) : backend_(std::move(backend)) {
    validate(options);
    options_ = std::move(options);
    resize(entries);
  }

  // Before anything changes: a non-finite gradient is rejected (NonFiniteGradient, naming it) or
  // skipped and counted; otherwise the step counts, and the host image gets each group's numbers
  // for it: the scheduled lr and decay, torch's clipping factor and the bias corrections. `rates`
  // has one entry per group of the block; `note` ends the non-finite error's message.
  StepReport begin_step(const GradientCheck& check, std::span<const GroupRates> rates, std::string_view note = "") {
    if (rates.size() != entries_)
      throw InvalidArgument("StepDriver::begin_step: " + std::to_string(rates.size()) + " group rates for a block of " +
                            std::to_string(entries_) + " entries");
    StepReport report;
    if (check.non_finite) {
      if (options_.on_non_finite == OnNonFinite::skip) {
        ++skipped_;
        report.step = step_;
        report.skipped = true;
        return report;
      }
      throw NonFiniteGradient(*check.non_finite, "gradient of parameter '" + *check.non_finite +
                                                     "' holds NaN or Inf; the step was rejected and nothing changed" +
                                                     std::string(note) +
                                                     " (set Options.on_non_finite = skip to skip such steps)");
    }
    report.grad_norm = std::sqrt(check.sum_squares);
    if (options_.max_grad_norm > 0.0) {
      // torch.nn.utils.clip_grad_norm_'s factor, so clipped runs match PyTorch's.
      const double coef = options_.max_grad_norm / (report.grad_norm + 1e-6);
      if (coef < 1.0) report.grad_scale = coef;
    }
    if (step_ >= kMaxStepCount)
      throw InvalidArgument("the step counter reached its limit of 2^53 steps; nothing was changed");
    const double factor = lr_factor(options_.schedule, step_);
    report.lr = options_.lr * factor;
    ++step_;
    report.step = step_;
    for (std::size_t i = 0; i < rates.size(); ++i) {
      const StepValues v = step_values(rates[i], factor, report.grad_scale, step_);
      std::memcpy(host_.span().data() + i * kStepValuesFloats, &v, sizeof v);
    }
    return report;
  }
  StepReport begin_step(const GradientCheck& check, std::string_view note = "") {
    return begin_step(check, rule_rates(options_), note);
  }

  // The one host-to-backend copy of the step's numbers; the steppers' operations come after it.
  void upload() { backend_.upload(host_.span(), block_.span()); }

  // Entry 0 of the block, in the backend's memory (the pointer stays valid until resize).
  [[nodiscard]] const StepValues* values() { return step_values_of(block_.span()); }

  // A block of `entries` groups: a new allocation, so steps recorded before must be recorded again.
  void resize(std::size_t entries) {
    if (entries == 0) throw InvalidArgument("StepDriver: the step block needs at least one entry");
    entries_ = entries;
    const auto floats = static_cast<std::int64_t>(entries) * kStepValuesFloats;
    block_ = backend_.allocate(floats);
    host_ = backend_.allocate_host(floats);
  }
  [[nodiscard]] std::size_t entries() const { return entries_; }

  [[nodiscard]] const Options& options() const { return options_; }
  void set_options(Options options) {
    validate(options);
    options_ = std::move(options);
  }
  [[nodiscard]] std::int64_t step_count() const { return step_; }
  [[nodiscard]] std::int64_t skipped_steps() const { return skipped_; }

  // Resumes from saved counts and options (validated; nothing changes if they are invalid).
  void restore(std::int64_t step, std::int64_t skipped, Options options) {
    check_step_counts(step, skipped, "StepDriver::restore");
    set_options(std::move(options));
    step_ = step;
    skipped_ = skipped;
  }

 private:
  B backend_;
  Options options_;
  std::size_t entries_ = 0;
  typename B::Buffer block_;
  typename B::HostBuffer host_;
  std::int64_t step_ = 0;
  std::int64_t skipped_ = 0;
};

}  // namespace muon
