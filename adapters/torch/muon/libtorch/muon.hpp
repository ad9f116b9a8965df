// muon/libtorch/muon.hpp: muon::libtorch::Muon, a torch::optim::Optimizer running the core's hybrid
// Muon/AdamW rules on LibTorch tensors (CPU or CUDA).
//
// Each parameter group has a role: "muon" groups run Muon (momentum → Newton–Schulz → update
// scaled to AdamW's RMS, decoupled decay), "adamw" groups run AdamW. moonlight_param_groups()
// builds the two groups from a module by Moonlight's policy. The math is the core's: one
// StepDriver over one Stepper per group (TorchBackend), so each group keeps its own options as
// LibTorch users expect (LR schedulers set them through get_lr/set_lr), and a step has one
// gradient check, one clipping decision and one step count, whatever the number of groups.
//
//   using muon::libtorch::Muon, muon::libtorch::MuonOptions, muon::libtorch::moonlight_param_groups;
//   auto opt = Muon(moonlight_param_groups(*model, MuonOptions(4.2e-4)));
//   loss.backward(); opt.step();
//   torch::save(opt, "opt.pt"); torch::load(opt, "opt.pt");   // state and group options, bit-exact
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <muon/io/json.hpp>
#include <muon/muon.hpp>
#include <muon/options_json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "muon/libtorch/backend.hpp"

namespace muon::libtorch {

// A group's options: the core's muon::Options (every field, by the core's names and schema) and
// the group's role. lr and weight_decay also have LibTorch's fluent accessors, which LR
// schedulers use; the other fields are set through core():
//   MuonOptions(4.2e-4).weight_decay(0.1);  o.core().muon.ns.steps = 6;
// The step-level fields of the constructor's defaults (schedule, max_grad_norm, on_non_finite)
// apply to the whole optimizer; a group's own copies of them are not read.
struct MuonOptions : public torch::optim::OptimizerCloneableOptions<MuonOptions> {
  MuonOptions(double lr = 1e-3) { core_.lr = lr; }  // NOLINT: implicit, like LibTorch's own options
  explicit MuonOptions(muon::Options core, muon::Rule role = muon::Rule::muon) : core_(std::move(core)), role_(role) {}

  [[nodiscard]] muon::Options& core() { return core_; }
  [[nodiscard]] const muon::Options& core() const { return core_; }
  [[nodiscard]] double lr() const { return core_.lr; }
  MuonOptions& lr(double value) {
    core_.lr = value;
    return *this;
  }
  [[nodiscard]] double weight_decay() const { return core_.weight_decay; }
  MuonOptions& weight_decay(double value) {
    core_.weight_decay = value;
    return *this;
  }
  [[nodiscard]] muon::Rule role() const { return role_; }
  MuonOptions& role(muon::Rule value) {
    role_ = value;
    return *this;
  }

  // Every field through the core's options schema, so nothing a group sets is lost.
  void serialize(torch::serialize::OutputArchive& archive) const override {
    nlohmann::json j = to_json(core_);
    j["role"] = role_ == muon::Rule::muon ? "muon" : "adamw";
    archive.write("muon_options", c10::IValue(j.dump()));
  }
  void serialize(torch::serialize::InputArchive& archive) override {
    c10::IValue text;
    archive.read("muon_options", text);
    nlohmann::json j = muon::io::parse_json(text.toStringRef(), "group options");
    const std::string role = j.value("role", "");
    if (role != "muon" && role != "adamw")
      throw muon::StateMismatch("group options: role '" + role + "' is not \"muon\" or \"adamw\"");
    j.erase("role");
    core_ = options_from_json(j);
    role_ = role == "muon" ? muon::Rule::muon : muon::Rule::adamw;
  }
  double get_lr() const override { return core_.lr; }
  void set_lr(const double value) override { core_.lr = value; }

 private:
  muon::Options core_{};
  muon::Rule role_ = muon::Rule::muon;
};

// The optimizer: one StepDriver (the step counter, the guard, clipping and the schedule, from
// the constructor's defaults) over one Stepper per parameter group; group i reads entry i of the
// step block, with its own lr, weight decay and rule options.
class Muon : public torch::optim::Optimizer {
 public:
  explicit Muon(std::vector<torch::optim::OptimizerParamGroup> groups, MuonOptions defaults = {})
      : Optimizer(std::move(groups), std::make_unique<MuonOptions>(std::move(defaults))) {}
  explicit Muon(std::vector<torch::Tensor> params, MuonOptions defaults = {})
      : Muon({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

  // One step of every group. Gradients are checked in all groups before any group changes: a
  // NaN or Inf anywhere throws muon::NonFiniteGradient (naming the parameter) and changes
  // nothing, or skips the step when the defaults say OnNonFinite::skip.
  torch::Tensor step(LossClosure closure = nullptr) override {
    torch::NoGradGuard no_grad;
    torch::Tensor loss;
    if (closure) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    sync_steppers();
    if (!driver_) return loss;
    muon::GradientCheck check;
    std::vector<muon::GroupRates> rates;
    for (std::size_t i = 0; i < steppers_.size(); ++i) {
      if (steppers_[i]) check.add(steppers_[i]->check_gradients());
      const muon::Options& o = group_options(i).core();
      rates.push_back({o.lr, o.weight_decay, o.adamw});
    }
    if (driver_->begin_step(check, rates).skipped) return loss;
    driver_->upload();
    for (auto& stepper : steppers_)
      if (stepper) stepper->apply(driver_->values());
    return loss;
  }

  // Completed and skipped steps (one count for all groups).
  [[nodiscard]] std::int64_t step_count() const { return driver_ ? driver_->step_count() : 0; }
  [[nodiscard]] std::int64_t skipped_steps() const { return driver_ ? driver_->skipped_steps() : 0; }

  // Writes the step counts and, per group, its options and its stepper's whole state, keyed by
  // position (group i, parameter j) like LibTorch's own archives.
  void save(torch::serialize::OutputArchive& archive) const override {
    archive.write("muon_format", c10::IValue(std::string(kFormat)));
    archive.write("groups", c10::IValue(static_cast<std::int64_t>(param_groups_.size())));
    archive.write("step", c10::IValue(step_count()));
    archive.write("skipped_steps", c10::IValue(skipped_steps()));
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      torch::serialize::OutputArchive group(archive.compilation_unit());
      torch::serialize::OutputArchive options(archive.compilation_unit());
      param_groups_[i].options().serialize(options);
      group.write("options", options);
      // A group with no stepper yet (no step since it was added) has no state to save.
      Stepper* stepper = i < steppers_.size() ? steppers_[i].get() : nullptr;
      group.write("has_state", c10::IValue(stepper != nullptr));
      if (stepper)
        for (const StateTensor& t : stepper->export_tensors())
          group.write(t.name, torch::from_blob(const_cast<float*>(t.values.data()), t.shape, torch::kFloat).clone());
      archive.write("group_" + std::to_string(i), group);
    }
  }

  // Restores what `save` wrote into an optimizer over the same parameters (same groups, order,
  // shapes): the group options too, which LibTorch's own load() leaves as constructed.
  void load(torch::serialize::InputArchive& archive) override {
    c10::IValue format, groups, step, skipped;
    archive.read("muon_format", format);
    if (format.toStringRef() != kFormat)
      throw muon::StateMismatch("archive format '" + format.toStringRef() + "' is not '" + kFormat + "'");
    archive.read("groups", groups);
    if (groups.toInt() != static_cast<std::int64_t>(param_groups_.size()))
      throw muon::StateMismatch("archive has " + std::to_string(groups.toInt()) + " parameter groups, this optimizer " +
                                std::to_string(param_groups_.size()));
    archive.read("step", step);
    archive.read("skipped_steps", skipped);
    muon::check_step_counts(step.toInt(), skipped.toInt(), "archive");
    sync_steppers();
    // Read and check every group first; install nothing until all are good.
    std::vector<MuonOptions> options(param_groups_.size());
    std::vector<std::vector<StateTensor>> tensors(param_groups_.size());
    std::vector<Stepper::Staged> staged(param_groups_.size());
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      torch::serialize::InputArchive group, group_options;
      archive.read("group_" + std::to_string(i), group);
      group.read("options", group_options);
      options[i].serialize(group_options);
      c10::IValue has_state;
      group.read("has_state", has_state);
      if (!has_state.toBool()) continue;
      const std::string source = "group " + std::to_string(i);
      if (!steppers_[i]) throw muon::StateMismatch(source + " has saved state but no parameters here");
      for (const std::string& name : steppers_[i]->state_names()) {
        torch::Tensor t;
        if (!group.try_read(name, t)) throw muon::StateMismatch(source + ": tensor '" + name + "' is missing");
        t = t.to(torch::kFloat).contiguous();
        tensors[i].push_back(
            {name, t.sizes().vec(), std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel())});
      }
      staged[i] = steppers_[i]->check_tensors(tensors[i], source);
    }
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      static_cast<MuonOptions&>(param_groups_[i].options()) = options[i];
      if (steppers_[i]) {
        steppers_[i]->import_tensors(staged[i]);
        steppers_[i]->set_rule_options(options[i].core().muon, options[i].core().adamw);
      }
    }
    if (driver_) driver_->restore(step.toInt(), skipped.toInt(), driver_->options());
  }

 private:
  static constexpr const char* kFormat = "muon.torch.v2";
  using Stepper = muon::Stepper<TorchBackend>;

  [[nodiscard]] const MuonOptions& group_options(std::size_t i) const {
    return static_cast<const MuonOptions&>(param_groups_[i].options());
  }

  // Makes the driver (once) and a stepper for each group (once), and points the steppers at the
  // current values and gradients: LibTorch may have reallocated the gradients since the last step.
  void sync_steppers() {
    steppers_.resize(param_groups_.size());
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      const MuonOptions& options = group_options(i);
      auto& params = param_groups_[i].params();
      if (params.empty()) continue;
      std::vector<TensorRef<float>> values;
      std::vector<TensorRef<const float>> grads;
      for (std::size_t j = 0; j < params.size(); ++j) {
        auto& p = params[j];
        const std::string name = "group" + std::to_string(i) + ".param" + std::to_string(j);
        if (p.scalar_type() != torch::kFloat || !p.is_contiguous())
          throw muon::InvalidArgument("parameter " + name + ": muon::libtorch::Muon takes contiguous float32 tensors");
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // Keller's convention: no grad = zero grad
        if (p.grad().is_sparse())
          throw muon::InvalidArgument("parameter " + name + " has a sparse gradient; Muon and AdamW need dense ones");
        if (!p.grad().is_contiguous() || p.grad().scalar_type() != torch::kFloat)
          p.mutable_grad() = p.grad().to(torch::kFloat).contiguous();
        values.push_back({p.data_ptr<float>(), p.sizes().vec()});
        grads.push_back({p.grad().data_ptr<float>(), p.grad().sizes().vec()});
      }
      const TorchBackend backend(params.front().device());
      if (!driver_) driver_.emplace(backend, static_cast<const MuonOptions&>(defaults()).core(), param_groups_.size());
      if (!steppers_[i]) {
        std::vector<muon::Parameter> table;
        for (std::size_t j = 0; j < params.size(); ++j)
          table.push_back({"group" + std::to_string(i) + ".param" + std::to_string(j), muon::Role::matrix, values[j],
                           grads[j], options.role()});
        steppers_[i] =
            std::make_unique<Stepper>(backend, std::move(table), options.core().muon, options.core().adamw, i, i);
      } else {
        for (std::size_t j = 0; j < params.size(); ++j) steppers_[i]->rebind(j, values[j], grads[j]);
        steppers_[i]->set_rule_options(options.core().muon, options.core().adamw);
      }
    }
    if (driver_ && driver_->entries() != param_groups_.size()) driver_->resize(param_groups_.size());
  }

  std::optional<muon::StepDriver<TorchBackend>> driver_;
  std::vector<std::unique_ptr<Stepper>> steppers_;
};

// Moonlight's routing for a module: parameters of 2 or more dimensions whose names match none of
// `adamw_name_patterns` go to a "muon" group; embeddings, the LM head (by name) and every 1-D
// tensor go to an "adamw" group. Both groups copy `options` and set the role.
inline std::vector<torch::optim::OptimizerParamGroup> moonlight_param_groups(
    torch::nn::Module& module, const MuonOptions& options,
    const std::vector<std::string>& adamw_name_patterns = {"embed", "lm_head"}) {
  std::vector<torch::Tensor> muon_params, adamw_params;
  for (const auto& item : module.named_parameters()) {
    const auto& name = item.key();
    const bool by_name = std::ranges::any_of(
        adamw_name_patterns, [&](const std::string& pattern) { return name.find(pattern) != std::string::npos; });
    (item.value().dim() >= 2 && !by_name ? muon_params : adamw_params).push_back(item.value());
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto muon_options = std::make_unique<MuonOptions>(options);
  muon_options->role(muon::Rule::muon);
  auto adamw_options = std::make_unique<MuonOptions>(options);
  adamw_options->role(muon::Rule::adamw);
  if (!muon_params.empty()) groups.emplace_back(std::move(muon_params), std::move(muon_options));
  if (!adamw_params.empty()) groups.emplace_back(std::move(adamw_params), std::move(adamw_options));
  return groups;
}

}  // namespace muon::libtorch
