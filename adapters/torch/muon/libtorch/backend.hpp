// muon/libtorch/backend.hpp: muon::Backend over LibTorch, for CPU and CUDA tensors alike.
//
// Every operation wraps the raw pointers it is given in tensors on the backend's device
// (torch::from_blob, no copy) and runs LibTorch ops on them, so the same core rules run
// wherever the parameters live. The Eigen backend is faster on the CPU (symmetric products,
// fused loops); this one exists so that LibTorch users' tensors never leave their device.
#pragma once

#include <torch/torch.h>

#include <muon/backend.hpp>
#include <cstddef>
#include <span>

namespace muon::libtorch {

class TorchBackend {
 public:
  explicit TorchBackend(torch::Device device = torch::kCPU) : device_(device) {}

  // float32 memory on the backend's device, zero-filled.
  class Buffer {
   public:
    Buffer() = default;
    explicit Buffer(torch::Tensor t) : tensor_(std::move(t)) {}
    [[nodiscard]] std::span<float> span() {
      return tensor_.defined() ? std::span<float>(tensor_.data_ptr<float>(), static_cast<std::size_t>(tensor_.numel()))
                               : std::span<float>();
    }

   private:
    torch::Tensor tensor_;
  };

  [[nodiscard]] Buffer allocate(std::int64_t n) { return Buffer(torch::zeros({n}, options())); }

  void gemm(float alpha, MatrixStack<const float> a, Transpose ta, MatrixStack<const float> b, Transpose tb,
            float beta, MatrixStack<float> c) {
    wrap(c).baddbmm_(op(wrap(a), ta), op(wrap(b), tb), beta, alpha);  // β = 0 ignores C, NaN included
  }
  void gram(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c) {
    const auto t = side == GramSide::rows ? Transpose::no : Transpose::yes;
    gemm(alpha, x, t, x, t == Transpose::no ? Transpose::yes : Transpose::no, beta, c);
  }
  void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y) {
    auto Y = wrap(y);
    const auto X = wrap(x);
    if (beta == 0.0f)
      Y.copy_(X).mul_(alpha);
    else
      Y.mul_(beta).add_(X, alpha);
  }
  void normalize(MatrixStack<float> x, float eps, NormEps mode) {
    auto flat = wrap(x).view({x.batch, -1});
    const auto norm = flat.to(torch::kDouble).norm(2, {1}, /*keepdim=*/true);
    const auto denom = mode == NormEps::add ? norm + double{eps} : norm.clamp_min(double{eps});
    flat.mul_(denom.reciprocal().to(torch::kFloat));
  }
  // NorMuon's per-row second moment and normalisation, in RowNormStep's arithmetic (double
  // reductions and v, float factors).
  void normalize_rows(MatrixStack<float> x, std::span<float> v, RowNormStep s) {
    auto rows = wrap(x).view({x.batch * x.rows, x.cols});
    auto V = wrap(v);
    const auto mean = rows.to(torch::kDouble).square().mean(1);
    V.copy_(V.to(torch::kDouble).mul(double{s.beta2}).add_(mean, 1.0 - double{s.beta2}));
    const auto factor = V.to(torch::kDouble).sqrt().add_(double{s.eps}).reciprocal().to(torch::kFloat);
    rows.mul_(factor.unsqueeze(1));
  }
  // The step's numbers are read from the step block as 0-dim tensors on the device, when the ops run.
  void momentum(std::span<float> m, std::span<const float> g, MomentumStep s, std::span<float> u) {
    auto M = wrap(m), U = wrap(u);
    const float gain = s.form == MomentumForm::sum ? 1.0f : 1.0f - s.mu;  // weight of G in the buffer
    const auto G = wrap(g) * step_value(s.values, offsetof(StepValues, grad_scale)) * gain;
    M.mul_(s.mu).add_(G);
    if (s.nesterov)
      torch::add_out(U, G, M, s.mu);
    else
      U.copy_(M);
  }
  void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v, AdamWStep s) {
    auto W = wrap(w), M = wrap(m), V = wrap(v);
    const auto G = wrap(g) * step_value(s.values, offsetof(StepValues, grad_scale));
    // torch.optim.AdamW's single-tensor order.
    W.mul_(step_value(s.values, offsetof(StepValues, decay)));
    M.lerp_(G, 1.0 - double{s.beta1});
    V.mul_(s.beta2).addcmul_(G, G, 1.0 - double{s.beta2});
    const auto denom = (V.sqrt() / step_value(s.values, offsetof(StepValues, adamw_bc2_sqrt))).add_(s.eps);
    W.sub_(M / denom * step_value(s.values, offsetof(StepValues, adamw_step_size)));
  }
  void update(std::span<float> w, std::span<const float> o, UpdateStep s) {
    const auto step = step_value(s.values, offsetof(StepValues, lr)) * s.scale;
    wrap(w).mul_(step_value(s.values, offsetof(StepValues, decay))).sub_(wrap(o) * step);
  }
  [[nodiscard]] double sum_squares(std::span<const float> x) {
    return wrap(x).to(torch::kDouble).square().sum().item<double>();
  }
  void to_host(std::span<const float> x, std::span<float> host) { host_tensor(host).copy_(wrap(x)); }
  void from_host(std::span<const float> host, std::span<float> y) {
    wrap(y).copy_(host_tensor({const_cast<float*>(host.data()), host.size()}));
  }
  // The step block's copy. It waits (LibTorch's capture is not wired up here), so the host may
  // refill the staging memory at once.
  void upload(std::span<const float> host, std::span<float> y) { from_host(host, y); }

  // Host memory for the step block, a CPU tensor: pinned when the device is a GPU.
  using HostBuffer = Buffer;
  [[nodiscard]] HostBuffer allocate_host(std::int64_t n) {
    auto t = torch::zeros({n}, torch::kFloat);
    return HostBuffer(device_.is_cuda() ? t.pin_memory() : t);
  }

  [[nodiscard]] torch::Device device() const { return device_; }

 private:
  [[nodiscard]] torch::TensorOptions options() const {
    return torch::TensorOptions().dtype(torch::kFloat).device(device_);
  }
  template <class T>
  torch::Tensor wrap(MatrixStack<T> m) const {
    return torch::from_blob(const_cast<float*>(m.data), {m.batch, m.rows, m.cols}, options());
  }
  template <class T>
  torch::Tensor wrap(std::span<T> s) const {
    return torch::from_blob(const_cast<float*>(s.data()), {static_cast<std::int64_t>(s.size())}, options());
  }
  static torch::Tensor op(const torch::Tensor& t, Transpose tr) { return tr == Transpose::yes ? t.transpose(1, 2) : t; }
  // The float at byte `offset` of a StepValues entry, as a 0-dim tensor on the device (no copy).
  [[nodiscard]] torch::Tensor step_value(const StepValues* values, std::size_t offset) const {
    return torch::from_blob(const_cast<float*>(reinterpret_cast<const float*>(values) + offset / sizeof(float)), {},
                              options());
  }
  static torch::Tensor host_tensor(std::span<float> s) {
    return torch::from_blob(s.data(), {static_cast<std::int64_t>(s.size())}, torch::kFloat);
  }

  torch::Device device_;
};

static_assert(Backend<TorchBackend>);

}  // namespace muon::libtorch
