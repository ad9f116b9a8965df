// muon/stepper.hpp: the state of one set of parameters and the update that moves them.
//
// A Stepper owns the optimizer state (momenta and NorMuon's second moments; AdamW moments), the
// shape groups Newton–Schulz batches over and their workspaces, and applies one update: Muon on its
// matrices (momentum → Newton–Schulz per shape group → scaled update with decay), AdamW on the
// rest. It knows no schedule, no step counter and no file: the step's numbers come from a
// StepValues block (muon/step_driver.hpp) that the operations read when they run, and the state
// goes in and out as host tensors (muon/state.hpp).
//
// It never owns the model's memory: the parameter table points at values and gradients in the
// backend's memory.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "muon/adamw_rule.hpp"
#include "muon/backend.hpp"
#include "muon/error.hpp"
#include "muon/muon_rule.hpp"
#include "muon/parameter.hpp"
#include "muon/state.hpp"
#include "muon/step_driver.hpp"

namespace muon {

template <Backend B>
class Stepper {
 public:
  using Buffer = typename B::Buffer;

  // `muon_entry` and `adamw_entry`: the entries of the step block its Muon and its AdamW
  // parameters read.
  Stepper(B backend, std::vector<Parameter> params, MuonOptions muon, AdamWOptions adamw,
          std::size_t muon_entry = kMuonEntry, std::size_t adamw_entry = kAdamWEntry)
      : backend_(std::move(backend)),
        params_(std::move(params)),
        muon_options_(std::move(muon)),
        adamw_options_(adamw),
        muon_entry_(muon_entry),
        adamw_entry_(adamw_entry) {
    validate_rule_options(muon_options_, adamw_options_);
    validate_table(params_);
    build_state();
  }
  // The shape groups' slots point into the state buffers.
  Stepper(const Stepper&) = delete;
  Stepper& operator=(const Stepper&) = delete;
  Stepper(Stepper&&) noexcept = default;
  Stepper& operator=(Stepper&&) noexcept = default;

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

  // One update of every parameter, reading the step's numbers from `block` (backend memory)
  // when the operations run. Enqueues only: no host synchronisation, no allocation after the
  // first call, so a backend may record it once and replay it.
  void apply(const StepValues* block) {
    const StepValues* muon_values = block + muon_entry_;
    for (MuonGroup& g : groups_) {
      const MatrixStack<float> stack{g.stack.span().data(), g.batch, g.rows, g.cols};
      muon_update(backend_, std::span<const MuonSlot>(g.slots), stack, *g.workspace, muon_options_, muon_values);
    }
    const StepValues* adamw_values = block + adamw_entry_;
    for (AdamWMember& a : adamw_members_) {
      const Parameter& p = params_[a.index];
      adamw_update(backend_, AdamWSlot{p.value.span(), p.grad.span(), a.exp_avg.span(), a.exp_avg_sq.span()}, adamw_options_,
                   adamw_values);
    }
  }

  // New rule options from the next update on; the state is kept.
  void set_rule_options(MuonOptions muon, AdamWOptions adamw) {
    validate_rule_options(muon, adamw);
    check_state_layout(muon_options_, muon);
    muon_options_ = std::move(muon);
    adamw_options_ = adamw;
  }

  [[nodiscard]] const MuonOptions& muon_options() const { return muon_options_; }
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
    make_slots();
  }

  // Every state buffer on the host, named "<parameter>/<buffer>", in one fixed order.
  [[nodiscard]] std::vector<StateTensor> export_tensors() {
    std::vector<StateTensor> out;
    for_each_state_buffer([&](const Parameter& p, const char* what, Buffer& buffer) {
      auto& t = out.emplace_back(StateTensor{p.name + "/" + what, state_shape(what, p.value.shape), {}});
      t.values.resize(buffer.span().size());
      backend_.to_host(buffer.span(), t.values);
    });
    return out;
  }

  // Each state buffer with the saved tensor that goes into it, after checking that `tensors`
  // holds exactly this stepper's buffers with their parameters' shapes. Throws StateMismatch
  // naming `source` and the first tensor at fault; changes nothing.
  using Staged = std::vector<std::pair<Buffer*, const StateTensor*>>;
  [[nodiscard]] Staged check_tensors(std::span<const StateTensor> tensors, const std::string& source) {
    const auto fail = [&](const std::string& what) { throw StateMismatch("optimizer state '" + source + "': " + what); };
    std::map<std::string, const StateTensor*> by_name;
    for (const StateTensor& t : tensors) by_name[t.name] = &t;
    std::set<std::string> expected;
    Staged staged;
    const std::string normuon = muon_options_.normuon.enabled ? "on" : "off";
    for_each_state_buffer([&](const Parameter& p, const char* what, Buffer& buffer) {
      const std::string name = p.name + "/" + what;
      const Shape shape = state_shape(what, p.value.shape);
      expected.insert(name);
      const auto it = by_name.find(name);
      if (it == by_name.end())
        fail("tensor '" + name + "' is missing (parameter '" + p.name + "' has no saved " + what + ")" +
             (what == std::string_view(kNorMuonV) ? "; NorMuon is on in this optimizer and the state has no second moment" : ""));
      if (it->second->shape != shape)
        fail("tensor '" + name + "' has shape " + to_string(it->second->shape) + ", the parameter" +
             (shape == p.value.shape ? "" : "'s " + std::string(what)) + " has " + to_string(shape));
      if (std::ssize(it->second->values) != numel(shape))
        fail("tensor '" + name + "' holds " + std::to_string(it->second->values.size()) + " values for shape " +
             to_string(shape));
      staged.emplace_back(&buffer, it->second);
    });
    for (const StateTensor& t : tensors)
      if (!expected.contains(t.name))
        fail("tensor '" + t.name + "' matches no parameter of this optimizer" +
             (t.name.ends_with(std::string("/") + kNorMuonV) ? " (NorMuon is " + normuon + " in this optimizer)" : ""));
    return staged;
  }
  void import_tensors(const Staged& staged) {
    for (const auto& [buffer, tensor] : staged) backend_.from_host(tensor->values, buffer->span());
  }

  // Floats of optimizer state held (momenta and moments).
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

 private:
  struct MuonMember {
    std::size_t index;
    Buffer momentum;
    std::int64_t offset;  // of this parameter's matrices in the group's stack, in elements
    Buffer normuon_v{};   // one float per row of each matrix, allocated when NorMuon is on
  };
  struct MuonGroup {
    MuonGroup(std::int64_t r, std::int64_t c) : rows(r), cols(c) {}
    std::int64_t rows, cols, batch = 0;
    std::vector<MuonMember> members;
    std::vector<MuonSlot> slots;  // one per member, made once (and again on rebind)
    Buffer stack;
    std::optional<NsWorkspace<B>> workspace;
  };
  struct AdamWMember {
    std::size_t index;
    Buffer exp_avg, exp_avg_sq;
  };

  static void validate_rule_options(const MuonOptions& muon, const AdamWOptions& adamw) {
    validate_fields(muon, "MuonOptions");
    validate_fields(adamw, "AdamWOptions");
  }

  void build_state() {
    std::map<std::pair<std::int64_t, std::int64_t>, std::size_t> group_of_shape;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Parameter& p = params_[i];
      if (route(p) == Rule::adamw) {
        adamw_members_.push_back({i, backend_.allocate(p.value.size()), backend_.allocate(p.value.size())});
        continue;
      }
      const auto& s = p.value.shape;
      const std::int64_t rows = s[s.size() - 2], cols = s[s.size() - 1];
      const auto [it, added] = group_of_shape.try_emplace({rows, cols}, groups_.size());
      if (added) groups_.emplace_back(rows, cols);
      MuonGroup& g = groups_[it->second];
      g.members.push_back({i, backend_.allocate(p.value.size()), g.batch * rows * cols,
                           muon_options_.normuon.enabled ? backend_.allocate(p.value.size() / cols) : Buffer{}});
      g.batch += p.value.size() / (rows * cols);
    }
    for (MuonGroup& g : groups_) {
      g.stack = backend_.allocate(g.batch * g.rows * g.cols);
      g.workspace.emplace(backend_, MatrixStack<const float>{g.stack.span().data(), g.batch, g.rows, g.cols}, muon_options_.ns);
    }
    make_slots();
  }

  void make_slots() {
    for (MuonGroup& g : groups_) {
      g.slots.clear();
      for (MuonMember& m : g.members) {
        const Parameter& p = params_[m.index];
        g.slots.push_back({p.value.span(), p.grad.span(), m.momentum.span(),
                           g.stack.span().subspan(static_cast<std::size_t>(m.offset),
                                                  static_cast<std::size_t>(p.value.size())),
                           m.normuon_v.span()});
      }
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
    const auto muon = state_buffer_names(Rule::muon, muon_options_);
    for (MuonGroup& g : groups_)
      for (MuonMember& m : g.members) {
        f(params_[m.index], muon[0], m.momentum);
        if (muon.size() > 1) f(params_[m.index], muon[1], m.normuon_v);
      }
    for (AdamWMember& a : adamw_members_) {
      const auto names = state_buffer_names(Rule::adamw, muon_options_);
      f(params_[a.index], names[0], a.exp_avg);
      f(params_[a.index], names[1], a.exp_avg_sq);
    }
  }

  B backend_;
  std::vector<Parameter> params_;
  MuonOptions muon_options_;
  AdamWOptions adamw_options_;
  std::size_t muon_entry_, adamw_entry_;
  std::vector<MuonGroup> groups_;
  std::vector<AdamWMember> adamw_members_;
};

}  // namespace muon
