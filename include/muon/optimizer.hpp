// muon/optimizer.hpp: the optimizer users hold, in one process. One `step()` runs the whole update:
//
//   gradients → guard (all finite? shapes right?) → global-norm clip (optional)   [StepDriver]
//     Muon params:  momentum → Newton–Schulz, batched per shape → scale → decay + apply   [Stepper]
//     AdamW params: fused AdamW
//
// It is a StepDriver (options, schedule, step counter, guard, clipping) over one Stepper (the
// state and the update). It never owns the model's memory: the parameter table points at values
// and gradients in the backend's memory. Its state goes in and out as host tensors
// (export_state, import_state); muon/state_file.hpp writes them to one safetensors file.
//
//   muon::Optimizer<muon::EigenBackend> opt(params, muon::Options{.lr = 4.2e-4});
//   for (...) { model.backward(); opt.step(); }
//
// Capturing a step (a CUDA graph; any backend that records): the gradient check reads a norm on
// the host, so it stays outside; begin_step decides the step on the host and apply() is what a
// capture holds (the step block's copy, then the update). Replay each later step with
//   opt.begin_step(opt.check_gradients());  then launch the captured apply().
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "muon/backend.hpp"
#include "muon/options.hpp"
#include "muon/parameter.hpp"
#include "muon/state.hpp"
#include "muon/step_driver.hpp"
#include "muon/stepper.hpp"

namespace muon {

template <class B>
class Optimizer {
  static_assert(Backend<B>,
                "muon::Optimizer<B>: B does not model muon::Backend. A backend needs Buffer and HostBuffer types "
                "and the operations allocate, allocate_host, gemm, gram, axpby, normalize, normalize_rows, momentum, "
                "adamw, update, sum_squares, to_host, from_host and upload with the signatures in muon/backend.hpp.");

 public:
  explicit Optimizer(std::vector<Parameter> params, Options options = {}, B backend = {})
      : driver_(backend, options), stepper_(std::move(backend), std::move(params), options.muon, options.adamw) {}

  // Reads every gradient once: its global squared norm and the first non-finite parameter, if
  // any. Changes nothing; throws ShapeMismatch or InvalidArgument for a bad gradient binding.
  [[nodiscard]] GradientCheck check_gradients() { return stepper_.check_gradients(); }

  StepReport step() { return step(check_gradients()); }

  // The step, given what check_gradients() just found on these same gradients.
  StepReport step(const GradientCheck& check) {
    const StepReport report = begin_step(check);
    if (!report.skipped) apply();
    return report;
  }

  // The host's half of a step: guard, clip, schedule, count (StepDriver::begin_step). Changes no
  // parameter; apply() then does, unless the report says the step was skipped.
  StepReport begin_step(const GradientCheck& check) { return driver_.begin_step(check); }

  // The backend's half: the step block's copy, then the update. Only enqueues work.
  void apply() {
    driver_.upload();
    stepper_.apply(driver_.values());
  }

  [[nodiscard]] std::int64_t step_count() const { return driver_.step_count(); }
  [[nodiscard]] std::int64_t skipped_steps() const { return driver_.skipped_steps(); }
  [[nodiscard]] const Options& options() const { return driver_.options(); }
  // New options from the next step on; invalid ones (or ones that turn NorMuon the other way)
  // throw InvalidArgument and change nothing.
  void set_options(Options options) {
    validate(options);
    check_state_layout(driver_.options().muon, options.muon);
    stepper_.set_rule_options(options.muon, options.adamw);
    driver_.set_options(std::move(options));
  }
  [[nodiscard]] const std::vector<Parameter>& parameters() const { return stepper_.parameters(); }
  [[nodiscard]] Rule rule_of(std::string_view name) const { return stepper_.rule_of(name); }
  [[nodiscard]] B& backend() { return stepper_.backend(); }

  // Re-points a parameter's value and gradient, e.g. when a framework reallocates gradients
  // between steps. The shapes must stay those of the table.
  void rebind(std::size_t index, TensorRef<float> value, TensorRef<const float> grad) {
    stepper_.rebind(index, std::move(value), std::move(grad));
  }

  // The whole state on the host: every buffer (named "<parameter>/<buffer>"), the step counts
  // and the options.
  [[nodiscard]] SavedState export_state() {
    return {driver_.step_count(), driver_.skipped_steps(), driver_.options(), stepper_.export_tensors()};
  }

  // Restores an exported state for the same parameter table (names, shapes, rules). Checks
  // everything before changing anything; a mismatch is a StateMismatch naming `source` and the
  // first tensor at fault, and leaves the optimizer as it was.
  void import_state(const SavedState& state, const std::string& source) {
    stepper_.import_tensors(checked(state, source));
    driver_.restore(state.step, state.skipped_steps, state.options);
    stepper_.set_rule_options(state.options.muon, state.options.adamw);
  }

  // import_state's checks alone: throws as it would, changes nothing.
  void check_state(const SavedState& state, const std::string& source) { (void)checked(state, source); }

  // Floats of optimizer state this optimizer holds (momenta and moments).
  [[nodiscard]] std::int64_t state_elements() { return stepper_.state_elements(); }

  // The names of the state buffers, in export order ("<parameter>/momentum", ...).
  [[nodiscard]] std::vector<std::string> state_names() { return stepper_.state_names(); }

 private:
  typename Stepper<B>::Staged checked(const SavedState& state, const std::string& source) {
    try {
      validate(state.options);
    } catch (const InvalidArgument& e) {
      throw StateMismatch("optimizer state '" + source + "': " + e.what());
    }
    check_step_counts(state.step, state.skipped_steps, source);
    auto staged = stepper_.check_tensors(state.tensors, source);
    try {
      check_state_layout(driver_.options().muon, state.options.muon);
    } catch (const InvalidArgument& e) {
      throw StateMismatch("optimizer state '" + source + "': " + e.what());
    }
    return staged;
  }

  StepDriver<B> driver_;
  Stepper<B> stepper_;
};

}  // namespace muon
