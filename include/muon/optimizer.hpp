// muon/optimizer.hpp: the optimizer users hold. One `step()` runs the whole update:
//
//   gradients → guard (all finite? shapes right?) → global-norm clip (optional)
//     Muon params:  momentum → Newton–Schulz, batched per shape → scale → decay + apply
//     AdamW params: fused AdamW
//
// It never owns the model's memory: the parameter table points at values and gradients in the
// backend's memory. It owns the state (momentum; AdamW moments), created eagerly, and saves and
// loads it as one safetensors file keyed by parameter name.
//
//   muon::Optimizer<muon::EigenBackend> opt(params, muon::Options{.lr = 4.2e-4});
//   for (...) { model.backward(); opt.step(); }
#pragma once

#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "muon/adamw_rule.hpp"
#include "muon/backend.hpp"
#include "muon/error.hpp"
#include "muon/muon_rule.hpp"
#include "muon/options.hpp"
#include "muon/parameter.hpp"
#include "muon/state_io.hpp"

namespace muon {

// What check_gradients found.
struct GradientCheck {
  double sum_squares = 0.0;                 // over all gradients (meaningless if non_finite)
  std::optional<std::string> non_finite{};  // the first parameter whose gradient holds NaN or Inf
};

// What one step did.
struct StepReport {
  std::int64_t step = 0;       // completed steps after this one
  double grad_norm = 0.0;      // global L2 norm of the gradients, before clipping
  double grad_scale = 1.0;     // the clipping factor applied (1 when not clipped)
  double lr = 0.0;             // base lr times the schedule factor
  bool skipped = false;        // a non-finite gradient was skipped (OnNonFinite::skip)
};

// How every step begins (here and in dist/zero1.hpp), before anything changes: a non-finite
// gradient is rejected (NonFiniteGradient) or skipped and counted; otherwise the step counts,
// and the report gets the norm, torch's clip factor and the scheduled lr. `note` ends the error.
inline StepReport begin_step(const GradientCheck& check, const Options& options, std::int64_t& step,
                             std::int64_t& skipped, std::string_view note = "") {
  StepReport report;
  if (check.non_finite) {
    if (options.on_non_finite == OnNonFinite::skip) {
      ++skipped;
      report.step = step;
      report.skipped = true;
      return report;
    }
    throw NonFiniteGradient(*check.non_finite, "gradient of parameter '" + *check.non_finite +
                                                   "' holds NaN or Inf; the step was rejected and nothing changed" +
                                                   std::string(note) +
                                                   " (set Options.on_non_finite = skip to skip such steps)");
  }
  report.grad_norm = std::sqrt(check.sum_squares);
  if (options.max_grad_norm > 0.0) {
    // torch.nn.utils.clip_grad_norm_'s factor, so clipped runs match PyTorch's.
    const double coef = options.max_grad_norm / (report.grad_norm + 1e-6);
    if (coef < 1.0) report.grad_scale = coef;
  }
  report.lr = options.lr * lr_factor(options.schedule, step);
  ++step;
  report.step = step;
  return report;
}

template <class B>
class Optimizer {
  static_assert(Backend<B>,
                "muon::Optimizer<B>: B does not model muon::Backend. A backend needs a Buffer type and "
                "the operations allocate, gemm, gram, axpby, normalize, momentum, adamw, sum_squares, "
                "to_host and from_host with the signatures in muon/backend.hpp.");

 public:
  using Buffer = typename B::Buffer;

  explicit Optimizer(std::vector<Parameter> params, Options options = {}, B backend = {})
      : backend_(std::move(backend)), params_(std::move(params)), options_(std::move(options)) {
    validate(options_);
    validate_table(params_);
    build_state();
  }

  // Reads every gradient once: its global squared norm and the first non-finite parameter, if
  // any. Changes nothing; throws ShapeMismatch or InvalidArgument for a bad gradient binding.
  [[nodiscard]] GradientCheck check_gradients() {
    GradientCheck check;
    for (const Parameter& p : params_) {
      check_gradient(p);
      const double ss = backend_.sum_squares(p.grad.span());
      if (!std::isfinite(ss)) {
        check.non_finite = p.name;
        return check;
      }
      check.sum_squares += ss;
    }
    return check;
  }

  StepReport step() { return step(check_gradients()); }

  // The step, given what check_gradients() just found on these same gradients (a caller that
  // checks several optimizers before stepping any, like the LibTorch adapter, reads them once).
  StepReport step(const GradientCheck& check) {
    StepReport report = begin_step(check, options_, step_, skipped_);
    if (report.skipped) return report;
    const double factor = lr_factor(options_.schedule, step_ - 1);

    const auto scale = static_cast<float>(report.grad_scale);
    const auto muon_lr = static_cast<float>(options_.muon_group.lr.value_or(options_.lr) * factor);
    const auto muon_wd = static_cast<float>(options_.muon_group.weight_decay.value_or(options_.weight_decay));
    for (MuonGroup& g : groups_) {
      std::vector<MuonSlot> slots;
      slots.reserve(g.members.size());
      for (MuonMember& m : g.members) {
        const Parameter& p = params_[m.index];
        slots.push_back({p.value.span(), p.grad.span(), m.momentum.span(),
                         g.stack.span().subspan(static_cast<std::size_t>(m.offset),
                                                static_cast<std::size_t>(p.value.size()))});
      }
      const MatrixStack<float> stack{g.stack.span().data(), g.batch, g.rows, g.cols};
      muon_update(backend_, std::span<const MuonSlot>(slots), stack, *g.workspace, options_.muon, muon_lr,
                  muon_wd, scale);
    }
    const auto adamw_lr = static_cast<float>(options_.adamw_group.lr.value_or(options_.lr) * factor);
    const auto adamw_wd = static_cast<float>(options_.adamw_group.weight_decay.value_or(options_.weight_decay));
    for (AdamWMember& a : adamw_) {
      const Parameter& p = params_[a.index];
      adamw_update(backend_, AdamWSlot{p.value.span(), p.grad.span(), a.exp_avg.span(), a.exp_avg_sq.span()},
                   options_.adamw, adamw_lr, adamw_wd, scale, step_);
    }
    return report;
  }

  [[nodiscard]] std::int64_t step_count() const { return step_; }
  [[nodiscard]] std::int64_t skipped_steps() const { return skipped_; }
  [[nodiscard]] const Options& options() const { return options_; }
  void set_options(Options options) {
    validate(options);
    options_ = std::move(options);
  }
  [[nodiscard]] const std::vector<Parameter>& parameters() const { return params_; }
  [[nodiscard]] Rule rule_of(std::string_view name) const { return route(params_.at(index_of(name))); }
  [[nodiscard]] B& backend() { return backend_; }

  // Re-points a parameter's value and gradient, e.g. when a framework reallocates gradients
  // between steps. The shapes must stay those of the table.
  void rebind(std::size_t index, TensorRef<float> value, TensorRef<const float> grad) {
    Parameter& p = params_.at(index);
    if (value.shape != p.value.shape)
      throw ShapeMismatch("parameter '" + p.name + "' is rebound with shape " + to_string(value.shape) +
                          ", the table has " + to_string(p.value.shape));
    Parameter rebound = p;
    rebound.value = std::move(value);
    rebound.grad = std::move(grad);
    check_gradient(rebound);
    p = std::move(rebound);
  }

  // The whole state on the host: every buffer (named "<parameter>/<buffer>"), the step counts
  // and the options. `save` writes it to safetensors; adapters write it to their own formats.
  [[nodiscard]] SavedState export_state() {
    SavedState out{step_, skipped_, options_, {}};
    const auto add = [&](const Parameter& p, const char* what, Buffer& buffer) {
      auto& t = out.tensors.emplace_back(StateTensor{p.name + "/" + what, p.value.shape, {}});
      t.values.resize(static_cast<std::size_t>(p.value.size()));
      backend_.to_host(buffer.span(), t.values);
    };
    for_each_state_buffer(add);
    return out;
  }

  // Restores an exported state for the same parameter table (names, shapes, rules). Checks
  // everything before changing anything; a mismatch is a StateMismatch naming `source` and the
  // first tensor at fault, and leaves the optimizer as it was.
  void import_state(const SavedState& state, const std::string& source) {
    for (auto& [buffer, tensor] : check_state(state, source)) backend_.from_host(tensor->values, buffer->span());
    options_ = state.options;
    step_ = state.step;
    skipped_ = state.skipped_steps;
  }

  // Floats of optimizer state this optimizer holds (momenta and moments).
  [[nodiscard]] std::int64_t state_elements() {
    std::int64_t n = 0;
    for_each_state_buffer([&](const Parameter&, const char*, Buffer& b) { n += std::ssize(b.span()); });
    return n;
  }

  // The names of the state buffers, in export order ("<parameter>/momentum", ...).
  [[nodiscard]] std::vector<std::string> state_names() {
    std::vector<std::string> names;
    for_each_state_buffer([&](const Parameter& p, const char* what, Buffer&) { names.push_back(p.name + "/" + what); });
    return names;
  }

  // import_state's checks alone: throws as it would, changes nothing. Returns each buffer with
  // the saved tensor that goes into it.
  std::vector<std::pair<Buffer*, const StateTensor*>> check_state(const SavedState& state, const std::string& source) {
    const auto fail = [&](const std::string& what) { throw StateMismatch("optimizer state '" + source + "': " + what); };
    validate(state.options);
    std::map<std::string, const StateTensor*> by_name;
    for (const StateTensor& t : state.tensors) by_name[t.name] = &t;
    std::set<std::string> expected;
    std::vector<std::pair<Buffer*, const StateTensor*>> staged;
    const auto stage = [&](const Parameter& p, const char* what, Buffer& buffer) {
      const std::string name = p.name + "/" + what;
      expected.insert(name);
      const auto it = by_name.find(name);
      if (it == by_name.end()) fail("tensor '" + name + "' is missing (parameter '" + p.name + "' has no saved " + what + ")");
      if (it->second->shape != p.value.shape)
        fail("tensor '" + name + "' has shape " + to_string(it->second->shape) + ", the parameter has " +
             to_string(p.value.shape));
      staged.emplace_back(&buffer, it->second);
    };
    for_each_state_buffer(stage);
    for (const StateTensor& t : state.tensors)
      if (!expected.contains(t.name)) fail("tensor '" + t.name + "' matches no parameter of this optimizer");
    return staged;
  }

  // Writes the state as one safetensors file, atomically.
  void save(const std::filesystem::path& path) { write_state_file(path, export_state()); }

  // Reads a file written by `save`; see import_state for the checks.
  void load(const std::filesystem::path& path) { import_state(read_state_file(path), path.string()); }

 private:
  struct MuonMember {
    std::size_t index;
    Buffer momentum;
    std::int64_t offset;  // of this parameter's matrices in the group's stack, in elements
  };
  struct MuonGroup {
    MuonGroup(std::int64_t r, std::int64_t c) : rows(r), cols(c) {}
    std::int64_t rows, cols, batch = 0;
    std::vector<MuonMember> members;
    Buffer stack;
    std::optional<NsWorkspace<B>> workspace;
  };
  struct AdamWMember {
    std::size_t index;
    Buffer exp_avg, exp_avg_sq;
  };

  void build_state() {
    std::map<std::pair<std::int64_t, std::int64_t>, std::size_t> group_of_shape;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Parameter& p = params_[i];
      if (route(p) == Rule::adamw) {
        adamw_.push_back({i, backend_.allocate(p.value.size()), backend_.allocate(p.value.size())});
        continue;
      }
      const auto& s = p.value.shape;
      const std::int64_t rows = s[s.size() - 2], cols = s[s.size() - 1];
      const auto [it, added] = group_of_shape.try_emplace({rows, cols}, groups_.size());
      if (added) groups_.emplace_back(rows, cols);
      MuonGroup& g = groups_[it->second];
      g.members.push_back({i, backend_.allocate(p.value.size()), g.batch * rows * cols});
      g.batch += p.value.size() / (rows * cols);
    }
    for (MuonGroup& g : groups_) {
      g.stack = backend_.allocate(g.batch * g.rows * g.cols);
      g.workspace.emplace(backend_, MatrixStack<const float>{g.stack.span().data(), g.batch, g.rows, g.cols},
                          options_.muon.ns);
    }
  }

  [[nodiscard]] std::size_t index_of(std::string_view name) const {
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (params_[i].name == name) return i;
    throw InvalidArgument("no parameter named '" + std::string(name) + "'");
  }

  // Calls f(parameter, buffer name, buffer) for every state buffer, in one fixed order.
  template <class F>
  void for_each_state_buffer(F&& f) {
    for (MuonGroup& g : groups_)
      for (MuonMember& m : g.members) f(params_[m.index], "momentum", m.momentum);
    for (AdamWMember& a : adamw_) {
      f(params_[a.index], "exp_avg", a.exp_avg);
      f(params_[a.index], "exp_avg_sq", a.exp_avg_sq);
    }
  }

  B backend_;
  std::vector<Parameter> params_;
  Options options_;
  std::vector<MuonGroup> groups_;
  std::vector<AdamWMember> adamw_;
  std::int64_t step_ = 0;
  std::int64_t skipped_ = 0;
};

}  // namespace muon
