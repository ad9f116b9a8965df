// muon/libtorch/muon.hpp: muon::libtorch::Muon, a torch::optim::Optimizer running the core's hybrid
// Muon/AdamW rules on LibTorch tensors (CPU or CUDA).
//
// Each parameter group has a role: "muon" groups run Muon (momentum → Newton–Schulz → update
// scaled to AdamW's RMS, decoupled decay), "adamw" groups run AdamW. moonlight_param_groups()
// builds the two groups from a module by Moonlight's policy. The math is the core's: one
// StepDriver over one Stepper per group, so each group keeps its own options as LibTorch users
// expect (LR schedulers set them through get_lr/set_lr), and a step has one gradient check, one
// clipping decision and one step count, whatever the number of groups.
//
// Which backend runs the steps (Engine::automatic, chosen at the first step from all groups'
// parameters; Muon::engine() says which), always over the tensors' own memory (no copy):
//   - every parameter a CPU tensor, where muon::eigen is linked and the file is not compiled by
//     nvcc (MUON_LIBTORCH_EIGEN, below): muon::EigenBackend (the core's CPU backend), bit for bit
//     what muon::Optimizer<EigenBackend> does on the same table with the same ns_precision;
//   - every parameter a CUDA tensor of one device, in a translation unit compiled by nvcc with
//     muon::cuda linked and a CUDA build of LibTorch (MUON_LIBTORCH_CUDA, below): muon::CudaBackend
//     on PyTorch's current stream and cuBLAS handle, the handle's math mode pinned to
//     CUBLAS_DEFAULT_MATH during the step, so torch's allow_tf32 cannot make its fp32 products TF32;
//   - anything else (other devices, CUDA tensors where the CUDA backend is not compiled in, a mix
//     of devices): TorchBackend (muon/libtorch/backend.hpp), LibTorch's own ops.
// The third constructor argument (EngineOptions) forces one (e.g. Engine::torch) and sets the
// Newton–Schulz precision of the Eigen and CUDA backends (by default theirs: bf16 where the
// hardware multiplies bf16 natively, else fp32; TorchBackend's products are fp32). Every backend
// takes contiguous float32 parameters only: float64, bfloat16 and float16 ones are an
// InvalidArgument naming the parameter and its dtype (keep float32 master weights; cast a copy
// for the forward pass).
// The archive (muon.torch.v2) holds CPU tensors, so it loads whichever backend saved it.
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
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "muon/libtorch/backend.hpp"

// 1 where CPU tensors run on the Eigen backend: built in (muon::eigen), and not under nvcc, which
// does not compile the backend's vector loops (a .cu file's CPU tensors take TorchBackend).
#if !defined(MUON_LIBTORCH_EIGEN)
#if defined(MUON_HAS_EIGEN) && !defined(__CUDACC__)
#define MUON_LIBTORCH_EIGEN 1
#else
#define MUON_LIBTORCH_EIGEN 0
#endif
#endif
#if MUON_LIBTORCH_EIGEN
#include <muon/backends/eigen.hpp>
#endif

// 1 where the CUDA backend can run CUDA tensors: it needs nvcc (its kernels), muon::cuda and a
// CUDA build of LibTorch (its current stream and cuBLAS handle; the generated header tested here
// exists only in CUDA builds: Debian's CPU-only libtorch ships ATen/cuda/*.h without it). Define
// it to 0 to opt out.
#if !defined(MUON_LIBTORCH_CUDA)
#if defined(MUON_HAS_CUDA) && defined(__CUDACC__) && __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#define MUON_LIBTORCH_CUDA 1
#else
#define MUON_LIBTORCH_CUDA 0
#endif
#endif

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

// The backend that runs a Muon's steps; `automatic` picks by the parameters' device (see the
// header comment).
enum class Engine { automatic, eigen, cuda, torch };

// Which backend runs, and its Newton–Schulz precision: EigenOptions::ns_precision or
// CudaOptions::ns_precision (automatic: bf16 where the hardware multiplies bf16 natively, as the
// core's backends decide; TorchBackend's products are always fp32).
struct EngineOptions {
  Engine engine = Engine::automatic;
  NsPrecision ns_precision = NsPrecision::automatic;
};

[[nodiscard]] inline const char* to_string(Engine e) {
  switch (e) {
    case Engine::eigen: return "eigen";
    case Engine::cuda: return "cuda";
    case Engine::torch: return "torch";
    case Engine::automatic: break;
  }
  return "automatic";
}

namespace internal {

// One backend's driver and steppers (one per group; null for a group with no parameters yet).
template <Backend B>
struct Run {
  Run(B b, torch::Device d) : backend(std::move(b)), device(d) {}
  B backend;  // the driver's and (except TorchBackend: one per group's device) the steppers'
  torch::Device device;  // of the first group's parameters
  std::optional<muon::StepDriver<B>> driver;
  std::vector<std::unique_ptr<muon::Stepper<B>>> steppers;
};

// What a step (or a load) needs around the backend's operations; nothing outside CUDA.
template <Backend B>
struct StepScope {
  explicit StepScope(Run<B>&) {}
};

}  // namespace internal
}  // namespace muon::libtorch

#if MUON_LIBTORCH_CUDA
#include "muon/libtorch/cuda.hpp"  // internal::StepScope<CudaBackend>, internal::cuda_backend_for
#endif

// Muon's layout depends on the backends compiled in, which may differ between a .cpp and a .cu
// of one program: each configuration gets its own inline namespace, so the two are two classes
// (as EigenBackend's MUON_CPU_CONFIG) rather than one class defined twice.
#if MUON_LIBTORCH_EIGEN && MUON_LIBTORCH_CUDA
#define MUON_LIBTORCH_CONFIG engines_eigen_cuda_torch
#elif MUON_LIBTORCH_EIGEN
#define MUON_LIBTORCH_CONFIG engines_eigen_torch
#elif MUON_LIBTORCH_CUDA
#define MUON_LIBTORCH_CONFIG engines_cuda_torch
#else
#define MUON_LIBTORCH_CONFIG engines_torch
#endif

namespace muon::libtorch {

inline namespace MUON_LIBTORCH_CONFIG {

// The optimizer: one StepDriver (the step counter, the guard, clipping and the schedule, from
// the constructor's defaults) over one Stepper per parameter group; group i reads entry i of the
// step block, with its own lr, weight decay and rule options.
class Muon : public torch::optim::Optimizer {
 public:
  explicit Muon(std::vector<torch::optim::OptimizerParamGroup> groups, MuonOptions defaults = {},
                EngineOptions engine = {})
      : Optimizer(std::move(groups), std::make_unique<MuonOptions>(std::move(defaults))), requested_(engine) {
#if !MUON_LIBTORCH_EIGEN
    if (engine.engine == Engine::eigen)
      throw muon::InvalidArgument(
          "Engine::eigen: the Eigen backend is not compiled in here (muon::eigen not linked, or a .cu file)");
#endif
#if !MUON_LIBTORCH_CUDA
    if (engine.engine == Engine::cuda)
      throw muon::InvalidArgument(
          "Engine::cuda: the CUDA backend is compiled in only where muon/libtorch/muon.hpp is included from a .cu "
          "file (nvcc) with muon::cuda linked and a CUDA build of LibTorch");
#endif
  }
  explicit Muon(std::vector<torch::Tensor> params, MuonOptions defaults = {}, EngineOptions engine = {})
      : Muon({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults), engine) {}

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
    on_run([&](auto& run) { step_on(run); });
    return loss;
  }

  // The backend that runs the steps: `automatic` until the first step (or load) has chosen one.
  [[nodiscard]] Engine engine() const { return engine_of(run_); }

  // Completed and skipped steps (one count for all groups).
  [[nodiscard]] std::int64_t step_count() const {
    return driver_count([](const auto& driver) { return driver.step_count(); });
  }
  [[nodiscard]] std::int64_t skipped_steps() const {
    return driver_count([](const auto& driver) { return driver.skipped_steps(); });
  }

  // Writes the step counts and, per group, its options and its stepper's whole state, keyed by
  // position (group i, parameter j) like LibTorch's own archives. The state goes out as CPU
  // float32 tensors, whichever backend holds it.
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
      const std::optional<std::vector<StateTensor>> state = export_group(i);
      group.write("has_state", c10::IValue(state.has_value()));
      if (state)
        for (const StateTensor& t : *state)
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
    on_run([&](auto& run) { load_into(run, archive, step.toInt(), skipped.toInt()); });
  }

 private:
  // `work(run)` on the chosen backend (chosen now if not yet), inside its StepScope and with its
  // steppers in step with the groups: what a step and a load share.
  template <class F>
  void on_run(F&& work) {
    prepare();
    std::visit(
        [&](auto& run) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(run)>, std::monostate>) {
            internal::StepScope scope(run);
            sync_run(run);
            work(run);
          }
        },
        run_);
  }
  // `count(driver)` of the chosen backend's driver; 0 before the first step (or load).
  template <class F>
  [[nodiscard]] std::int64_t driver_count(F&& count) const {
    return std::visit(
        [&](const auto& run) -> std::int64_t {
          if constexpr (std::is_same_v<std::decay_t<decltype(run)>, std::monostate>)
            return 0;
          else
            return run.driver ? count(*run.driver) : 0;
        },
        run_);
  }

  static constexpr const char* kFormat = "muon.torch.v2";
  using RunState = std::variant<std::monostate,
#if MUON_LIBTORCH_EIGEN
                                internal::Run<muon::EigenBackend>,
#endif
#if MUON_LIBTORCH_CUDA
                                internal::Run<muon::CudaBackend>,
#endif
                                internal::Run<TorchBackend>>;

  [[nodiscard]] const MuonOptions& group_options(std::size_t i) const {
    return static_cast<const MuonOptions&>(param_groups_[i].options());
  }
  static std::string param_name(std::size_t group, std::size_t index) {
    return "group" + std::to_string(group) + ".param" + std::to_string(index);
  }

  template <Backend B>
  static Engine engine_of_backend() {
#if MUON_LIBTORCH_EIGEN
    if constexpr (std::is_same_v<B, muon::EigenBackend>) return Engine::eigen;
#endif
#if MUON_LIBTORCH_CUDA
    if constexpr (std::is_same_v<B, muon::CudaBackend>) return Engine::cuda;
#endif
    return Engine::torch;
  }
  static Engine engine_of(const RunState& run) {
    return std::visit(
        [](const auto& r) {
          using R = std::decay_t<decltype(r)>;
          if constexpr (std::is_same_v<R, std::monostate>)
            return Engine::automatic;
          else
            return engine_of_backend<decltype(r.backend)>();
        },
        run);
  }

  template <Backend B>
  void step_on(internal::Run<B>& run) {
    if (!run.driver) return;
    muon::GradientCheck check;
    std::vector<muon::GroupRates> rates;
    for (std::size_t i = 0; i < run.steppers.size(); ++i) {
      if (run.steppers[i]) check.add(run.steppers[i]->check_gradients());
      const muon::Options& o = group_options(i).core();
      rates.push_back({o.lr, o.weight_decay, o.adamw});
    }
    if (run.driver->begin_step(check, rates).skipped) return;
    run.driver->upload();
    for (auto& stepper : run.steppers)
      if (stepper) stepper->apply(run.driver->values());
  }

  [[nodiscard]] std::optional<std::vector<StateTensor>> export_group(std::size_t i) const {
    return std::visit(
        [&](const auto& r) -> std::optional<std::vector<StateTensor>> {
          if constexpr (std::is_same_v<std::decay_t<decltype(r)>, std::monostate>) {
            return std::nullopt;
          } else {
            if (i >= r.steppers.size() || !r.steppers[i]) return std::nullopt;
            return r.steppers[i]->export_tensors();
          }
        },
        run_);
  }

  template <Backend B>
  void load_into(internal::Run<B>& run, torch::serialize::InputArchive& archive, std::int64_t step,
                 std::int64_t skipped) {
    // Read and check every group first; install nothing until all are good.
    std::vector<MuonOptions> options(param_groups_.size());
    std::vector<std::vector<StateTensor>> tensors(param_groups_.size());
    std::vector<typename muon::Stepper<B>::Staged> staged(param_groups_.size());
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      torch::serialize::InputArchive group, group_options;
      archive.read("group_" + std::to_string(i), group);
      group.read("options", group_options);
      options[i].serialize(group_options);
      c10::IValue has_state;
      group.read("has_state", has_state);
      if (!has_state.toBool()) continue;
      const std::string source = "group " + std::to_string(i);
      if (!run.steppers[i]) throw muon::StateMismatch(source + " has saved state but no parameters here");
      for (const std::string& name : run.steppers[i]->state_names()) {
        torch::Tensor t;
        if (!group.try_read(name, t)) throw muon::StateMismatch(source + ": tensor '" + name + "' is missing");
        t = t.to(torch::kCPU, torch::kFloat).contiguous();
        tensors[i].push_back(
            {name, t.sizes().vec(), std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel())});
      }
      staged[i] = run.steppers[i]->check_tensors(tensors[i], source);
      try {
        muon::check_state_layout(run.steppers[i]->muon_options(), options[i].core().muon);
      } catch (const muon::InvalidArgument& e) {
        throw muon::StateMismatch(source + ": " + e.what());
      }
    }
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      static_cast<MuonOptions&>(param_groups_[i].options()) = options[i];
      if (run.steppers[i]) {
        run.steppers[i]->import_tensors(staged[i]);
        run.steppers[i]->set_rule_options(options[i].core().muon, options[i].core().adamw);
      }
    }
    if (run.driver) run.driver->restore(step, skipped, run.driver->options());
  }

  // Every parameter must be a contiguous float32 tensor; its gradient becomes one on its device.
  void check_parameters() {
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      auto& params = param_groups_[i].params();
      for (std::size_t j = 0; j < params.size(); ++j) {
        auto& p = params[j];
        const std::string name = param_name(i, j);
        if (p.scalar_type() != torch::kFloat)
          throw muon::InvalidArgument("parameter " + name + " is " + std::string(c10::toString(p.scalar_type())) +
                                      ": muon::libtorch::Muon takes contiguous float32 tensors (keep float32 master "
                                      "weights and cast a copy for the forward pass)");
        if (!p.is_contiguous())
          throw muon::InvalidArgument("parameter " + name +
                                      " is not contiguous: muon::libtorch::Muon takes contiguous float32 tensors");
        if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);  // Keller's convention: no grad = zero grad
        if (p.grad().is_sparse())
          throw muon::InvalidArgument("parameter " + name + " has a sparse gradient; Muon and AdamW need dense ones");
        if (!p.grad().is_contiguous() || p.grad().scalar_type() != torch::kFloat || p.grad().device() != p.device())
          p.mutable_grad() = p.grad().to(p.device(), torch::kFloat).contiguous();
      }
    }
  }

  // The engine for the parameters of every group: the requested one, checked, or by device.
  [[nodiscard]] Engine choose_engine() const {
    std::optional<torch::Device> first;
    bool one_device = true;
    for (const auto& group : param_groups_)
      for (const auto& p : group.params()) {
        if (!first) first = p.device();
        one_device = one_device && p.device() == *first;
      }
    const bool all_cpu = one_device && first && first->is_cpu();
    const bool all_cuda = one_device && first && first->is_cuda();
    const auto refuse = [&](const char* what) {
      throw muon::InvalidArgument(std::string("Engine::") + to_string(requested_.engine) + " needs every parameter " +
                                  what);
    };
    switch (requested_.engine) {
      case Engine::eigen:
        if (!all_cpu) refuse("on the CPU");
        return Engine::eigen;
      case Engine::cuda:
        if (!all_cuda) refuse("on one CUDA device");
        return Engine::cuda;
      case Engine::torch: return Engine::torch;
      case Engine::automatic: break;
    }
#if MUON_LIBTORCH_EIGEN
    if (all_cpu) return Engine::eigen;
#endif
#if MUON_LIBTORCH_CUDA
    if (all_cuda) return Engine::cuda;
#endif
    return Engine::torch;
  }

  // The first time there are parameters: the engine and its backend.
  void make_run() {
    bool any = false;
    for (const auto& group : param_groups_) any = any || !group.params().empty();
    if (!any) return;
    const Engine engine = choose_engine();
    const torch::Device device = first_device();
    switch (engine) {
#if MUON_LIBTORCH_EIGEN
      case Engine::eigen:
        run_.emplace<internal::Run<muon::EigenBackend>>(muon::EigenBackend({.ns_precision = requested_.ns_precision}),
                                                        device);
        return;
#endif
#if MUON_LIBTORCH_CUDA
      case Engine::cuda:
        run_.emplace<internal::Run<muon::CudaBackend>>(
            internal::cuda_backend_for(device, requested_.ns_precision), device);
        return;
#endif
      default: run_.emplace<internal::Run<TorchBackend>>(TorchBackend(device), device); return;
    }
  }
  [[nodiscard]] torch::Device first_device() const {
    for (const auto& group : param_groups_)
      if (!group.params().empty()) return group.params().front().device();
    return torch::kCPU;
  }

  // A group's backend: the run's, or TorchBackend on the group's device.
  template <Backend B>
  [[nodiscard]] static B backend_for_group(internal::Run<B>& run, const std::vector<torch::Tensor>& params) {
    if constexpr (std::is_same_v<B, TorchBackend>)
      return TorchBackend(params.front().device());
    else
      return run.backend;
  }

  // A parameter added after the engine was chosen must suit it.
  template <Backend B>
  static void check_device(const internal::Run<B>& run, const torch::Tensor& p, const std::string& name) {
    const Engine engine = engine_of_backend<B>();
    if (engine == Engine::eigen && !p.device().is_cpu())
      throw muon::InvalidArgument("parameter " + name + " is on " + p.device().str() +
                                  ", but this optimizer runs the Eigen backend on CPU tensors");
#if MUON_LIBTORCH_CUDA
    if constexpr (std::is_same_v<B, muon::CudaBackend>)
      if (p.device() != run.device)
        throw muon::InvalidArgument("parameter " + name + " is on " + p.device().str() +
                                    ", but this optimizer runs the CUDA backend on " + run.device.str());
#endif
    (void)run;
  }

  // Checks the parameters and chooses the engine (once, when there are parameters).
  void prepare() {
    check_parameters();
    if (std::holds_alternative<std::monostate>(run_)) make_run();
  }

  // Makes the engine's driver (once) and a stepper for each group (once), and points the steppers
  // at the current values and gradients: LibTorch may have reallocated the gradients since the
  // last step.
  template <Backend B>
  void sync_run(internal::Run<B>& run) {
    run.steppers.resize(param_groups_.size());
    for (std::size_t i = 0; i < param_groups_.size(); ++i) {
      const MuonOptions& options = group_options(i);
      auto& params = param_groups_[i].params();
      if (params.empty()) continue;
      std::vector<TensorRef<float>> values;
      std::vector<TensorRef<const float>> grads;
      for (std::size_t j = 0; j < params.size(); ++j) {
        auto& p = params[j];
        if (!run.steppers[i]) check_device(run, p, param_name(i, j));
        values.push_back({p.data_ptr<float>(), p.sizes().vec()});
        grads.push_back({p.grad().data_ptr<float>(), p.grad().sizes().vec()});
      }
      const B backend = backend_for_group(run, params);
      if (!run.driver)
        run.driver.emplace(backend, static_cast<const MuonOptions&>(defaults()).core(), param_groups_.size());
      if (!run.steppers[i]) {
        std::vector<muon::Parameter> table;
        for (std::size_t j = 0; j < params.size(); ++j)
          table.push_back({param_name(i, j), muon::Role::matrix, values[j], grads[j], options.role()});
        run.steppers[i] = std::make_unique<muon::Stepper<B>>(backend, std::move(table), options.core().muon,
                                                             options.core().adamw, i, i);
      } else {
        for (std::size_t j = 0; j < params.size(); ++j) run.steppers[i]->rebind(j, values[j], grads[j]);
        run.steppers[i]->set_rule_options(options.core().muon, options.core().adamw);
      }
    }
    if (run.driver && run.driver->entries() != param_groups_.size()) run.driver->resize(param_groups_.size());
  }

  EngineOptions requested_;
  RunState run_;
};

}  // namespace MUON_LIBTORCH_CONFIG

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
