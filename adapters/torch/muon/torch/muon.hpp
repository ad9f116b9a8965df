// muon/torch/muon.hpp: muon::torch::Muon, a torch::optim::Optimizer running the core's hybrid
// Muon/AdamW rules on LibTorch tensors (CPU or CUDA).
//
// Each parameter group has a role: "muon" groups run Muon (momentum → Newton–Schulz → update
// scaled to AdamW's RMS, decoupled decay), "adamw" groups run AdamW. moonlight_param_groups()
// builds the two groups from a module by Moonlight's policy. The math is the core's
// (muon::Optimizer over TorchBackend), one core optimizer per group, so each group keeps its
// own options as LibTorch users expect (LR schedulers set them through get_lr/set_lr).
//
//   auto opt = muon::torch::Muon(muon::torch::moonlight_param_groups(*model, muon::torch::MuonOptions(4.2e-4)));
//   loss.backward(); opt.step();
//   torch::save(opt, "opt.pt"); torch::load(opt, "opt.pt");   // state and group options, bit-exact
#pragma once

#include <torch/torch.h>

#include <memory>
#include <muon/muon.hpp>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "muon/torch/backend.hpp"

namespace muon::torch {

struct MuonOptions : public ::torch::optim::OptimizerCloneableOptions<MuonOptions> {
  MuonOptions(double lr = 1e-3) : lr_(lr) {}  // NOLINT: implicit, like LibTorch's own options
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, weight_decay) = 0.1;
  TORCH_ARG(muon::Rule, role) = muon::Rule::muon;
  // Muon
  TORCH_ARG(double, momentum) = 0.95;
  TORCH_ARG(muon::MomentumForm, momentum_form) = muon::MomentumForm::sum;
  TORCH_ARG(bool, nesterov) = true;
  TORCH_ARG(muon::ScaleMode, scale) = muon::ScaleMode::match_adamw_rms;
  TORCH_ARG(muon::NsSchedule, ns_schedule) = muon::keller_quintic();
  TORCH_ARG(std::int64_t, ns_steps) = 5;
  TORCH_ARG(double, ns_eps) = 1e-7;
  TORCH_ARG(muon::NormEps, ns_eps_mode) = muon::NormEps::add;
  // AdamW
  typedef std::tuple<double, double> betas_t;
  TORCH_ARG(betas_t, betas) = std::make_tuple(0.9, 0.95);
  TORCH_ARG(double, eps) = 1e-8;

 public:
  // The core's options for this group.
  [[nodiscard]] muon::Options core() const {
    muon::Options o{.lr = lr(), .weight_decay = weight_decay()};
    o.muon = {static_cast<float>(momentum()), momentum_form(), nesterov(), scale(),
              muon::NsOptions{.schedule = ns_schedule(), .steps = static_cast<int>(ns_steps()),
                              .eps = static_cast<float>(ns_eps()), .eps_mode = ns_eps_mode()}};
    o.adamw = {static_cast<float>(std::get<0>(betas())), static_cast<float>(std::get<1>(betas())),
               static_cast<float>(eps())};
    return o;
  }
  // All fields as the core's JSON, so a custom schedule survives a save and load.
  void serialize(::torch::serialize::OutputArchive& archive) const override {
    nlohmann::json j = to_json(core());
    j["role"] = role() == muon::Rule::muon ? "muon" : "adamw";
    archive.write("muon_options", c10::IValue(j.dump()));
  }
  void serialize(::torch::serialize::InputArchive& archive) override {
    c10::IValue text;
    archive.read("muon_options", text);
    const auto j = nlohmann::json::parse(text.toStringRef());
    const muon::Options o = options_from_json(j);
    lr(o.lr).weight_decay(o.weight_decay).role(j.at("role") == "muon" ? muon::Rule::muon : muon::Rule::adamw);
    momentum(o.muon.momentum).momentum_form(o.muon.momentum_form).nesterov(o.muon.nesterov).scale(o.muon.scale);
    ns_schedule(o.muon.ns.schedule).ns_steps(o.muon.ns.steps).ns_eps(o.muon.ns.eps).ns_eps_mode(o.muon.ns.eps_mode);
    betas({o.adamw.beta1, o.adamw.beta2}).eps(o.adamw.eps);
  }
  double get_lr() const override { return lr(); }
  void set_lr(const double value) override { lr(value); }
};

class Muon : public ::torch::optim::Optimizer {
 public:
  explicit Muon(std::vector<::torch::optim::OptimizerParamGroup> groups, MuonOptions defaults = {})
      : Optimizer(std::move(groups), std::make_unique<MuonOptions>(std::move(defaults))) {}
  explicit Muon(std::vector<::torch::Tensor> params, MuonOptions defaults = {})
      : Muon({::torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

  // One step of every group. Gradients are checked in all groups before any group changes, so a
  // NaN or Inf anywhere throws muon::NonFiniteGradient (naming the parameter) and changes nothing.
  ::torch::Tensor step(LossClosure closure = nullptr) override {
    ::torch::NoGradGuard no_grad;
    ::torch::Tensor loss;
    if (closure) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    sync_cores();
    std::vector<muon::GradientCheck> checks(cores_.size());
    for (std::size_t i = 0; i < cores_.size(); ++i)
      if (cores_[i]) {
        checks[i] = cores_[i]->check_gradients();
        if (checks[i].non_finite)
          throw muon::NonFiniteGradient(*checks[i].non_finite, "gradient of parameter '" + *checks[i].non_finite +
                                                                   "' holds NaN or Inf; the step was rejected and nothing changed");
      }
    for (std::size_t i = 0; i < cores_.size(); ++i)
      if (cores_[i]) (void)cores_[i]->step(checks[i]);
    return loss;
  }

  // Writes, per group, its options and the core's whole state, keyed by position (group i,
  // parameter j) like LibTorch's own archives.
  void save(::torch::serialize::OutputArchive& archive) const override {
    archive.write("muon_format", c10::IValue(std::string(kFormat)));
    archive.write("groups", c10::IValue(static_cast<std::int64_t>(param_groups_.size())));
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      ::torch::serialize::OutputArchive group(archive.compilation_unit());
      ::torch::serialize::OutputArchive options(archive.compilation_unit());
      param_groups_[i].options().serialize(options);
      group.write("options", options);
      // A group with no core yet (no step since it was added) has no state to save.
      Core* core = i < cores_.size() ? cores_[i].get() : nullptr;
      group.write("has_state", c10::IValue(core != nullptr));
      if (core) {
        const SavedState state = core->export_state();
        group.write("step", c10::IValue(state.step));
        group.write("skipped_steps", c10::IValue(state.skipped_steps));
        for (const StateTensor& t : state.tensors)
          group.write(t.name, ::torch::from_blob(const_cast<float*>(t.values.data()), t.shape, ::torch::kFloat).clone());
      }
      archive.write("group_" + std::to_string(i), group);
    }
  }

  // Restores what `save` wrote into an optimizer over the same parameters (same groups, order,
  // shapes): the group options too, which LibTorch's own load() leaves as constructed.
  void load(::torch::serialize::InputArchive& archive) override {
    c10::IValue format, groups;
    archive.read("muon_format", format);
    if (format.toStringRef() != kFormat)
      throw muon::StateMismatch("archive format '" + format.toStringRef() + "' is not '" + kFormat + "'");
    archive.read("groups", groups);
    if (groups.toInt() != static_cast<std::int64_t>(param_groups_.size()))
      throw muon::StateMismatch("archive has " + std::to_string(groups.toInt()) + " parameter groups, this optimizer " +
                                std::to_string(param_groups_.size()));
    sync_cores();
    // Read and check every group first; install nothing until all are good.
    std::vector<std::pair<MuonOptions, std::optional<SavedState>>> loaded;
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      ::torch::serialize::InputArchive group, options;
      archive.read("group_" + std::to_string(i), group);
      group.read("options", options);
      MuonOptions o;
      o.serialize(options);
      c10::IValue has_state;
      group.read("has_state", has_state);
      std::optional<SavedState> state;
      if (has_state.toBool()) {
        if (!cores_[i]) throw muon::StateMismatch("group " + std::to_string(i) + " has saved state but no parameters here");
        SavedState s;
        c10::IValue step, skipped;
        group.read("step", step);
        group.read("skipped_steps", skipped);
        s.step = step.toInt();
        s.skipped_steps = skipped.toInt();
        s.options = o.core();
        for (const std::string& name : cores_[i]->state_names()) {
          ::torch::Tensor t;
          if (!group.try_read(name, t))
            throw muon::StateMismatch("group " + std::to_string(i) + ": tensor '" + name + "' is missing");
          t = t.to(::torch::kFloat).contiguous();
          s.tensors.push_back({name, t.sizes().vec(), std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel())});
        }
        state = std::move(s);
      }
      loaded.emplace_back(std::move(o), std::move(state));
    }
    for (std::size_t i = 0; i < loaded.size(); ++i)
      if (loaded[i].second) cores_[i]->check_state(*loaded[i].second, "group " + std::to_string(i));
    for (std::size_t i = 0; i < loaded.size(); ++i) {
      static_cast<MuonOptions&>(param_groups_[i].options()) = loaded[i].first;
      if (loaded[i].second) cores_[i]->import_state(*loaded[i].second, "group " + std::to_string(i));
    }
  }

 private:
  static constexpr const char* kFormat = "muon.torch.v1";
  using Core = muon::Optimizer<TorchBackend>;

  // Makes a core optimizer for each group (once) and points it at the current values and
  // gradients; LibTorch may have reallocated the gradients since the last step.
  void sync_cores() {
    cores_.resize(param_groups_.size());
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      auto& group = param_groups_[i];
      const auto& options = static_cast<const MuonOptions&>(group.options());
      auto& params = group.params();
      if (params.empty()) continue;
      std::vector<TensorRef<float>> values;
      std::vector<TensorRef<const float>> grads;
      for (std::size_t j = 0; j < params.size(); ++j) {
        auto& p = params[j];
        const std::string name = "group" + std::to_string(i) + ".param" + std::to_string(j);
        if (p.scalar_type() != ::torch::kFloat || !p.is_contiguous())
          throw muon::InvalidArgument("parameter " + name + ": muon::torch::Muon takes contiguous float32 tensors");
        if (!p.grad().defined()) p.mutable_grad() = ::torch::zeros_like(p);  // Keller's convention: no grad = zero grad
        if (p.grad().is_sparse())
          throw muon::InvalidArgument("parameter " + name + " has a sparse gradient; Muon and AdamW need dense ones");
        if (!p.grad().is_contiguous() || p.grad().scalar_type() != ::torch::kFloat)
          p.mutable_grad() = p.grad().to(::torch::kFloat).contiguous();
        values.push_back({p.data_ptr<float>(), p.sizes().vec()});
        grads.push_back({p.grad().data_ptr<float>(), p.grad().sizes().vec()});
      }
      if (!cores_[i]) {
        std::vector<muon::Parameter> table;
        for (std::size_t j = 0; j < params.size(); ++j)
          table.push_back({"group" + std::to_string(i) + ".param" + std::to_string(j), muon::Role::matrix, values[j], grads[j],
                           options.role()});
        cores_[i] = std::make_unique<Core>(std::move(table), options.core(), TorchBackend(params.front().device()));
      } else {
        for (std::size_t j = 0; j < params.size(); ++j) cores_[i]->rebind(j, values[j], grads[j]);
        cores_[i]->set_options(options.core());
      }
    }
  }

  std::vector<std::unique_ptr<Core>> cores_;
};

// Moonlight's routing for a module: parameters of 2 or more dimensions whose names match none of
// `adamw_name_patterns` go to a "muon" group; embeddings, the LM head (by name) and every 1-D
// tensor go to an "adamw" group. Both groups copy `options` and set the role.
inline std::vector<::torch::optim::OptimizerParamGroup> moonlight_param_groups(
    ::torch::nn::Module& module, const MuonOptions& options,
    const std::vector<std::string>& adamw_name_patterns = {"embed", "lm_head"}) {
  std::vector<::torch::Tensor> muon_params, adamw_params;
  for (const auto& item : module.named_parameters()) {
    const auto& name = item.key();
    const bool by_name = std::any_of(adamw_name_patterns.begin(), adamw_name_patterns.end(),
                                     [&](const std::string& pattern) { return name.find(pattern) != std::string::npos; });
    (item.value().dim() >= 2 && !by_name ? muon_params : adamw_params).push_back(item.value());
  }
  std::vector<::torch::optim::OptimizerParamGroup> groups;
  auto muon_options = std::make_unique<MuonOptions>(options);
  muon_options->role(muon::Rule::muon);
  auto adamw_options = std::make_unique<MuonOptions>(options);
  adamw_options->role(muon::Rule::adamw);
  if (!muon_params.empty()) groups.emplace_back(std::move(muon_params), std::move(muon_options));
  if (!adamw_params.empty()) groups.emplace_back(std::move(adamw_params), std::move(adamw_options));
  return groups;
}

}  // namespace muon::torch
