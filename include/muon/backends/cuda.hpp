// muon/backends/cuda.hpp: the CUDA backend, on cuBLAS and the kernels in kernels/*.cuh.
//
// Models muon::Backend over device memory: Buffers are stream-ordered device allocations,
// `span()` views device memory, and the parameters and gradients in the optimizer's table are
// device pointers. Every operation is enqueued on one stream (the user's, or one the backend
// makes) and none synchronises the host, except those whose result the host needs:
// `sum_squares` (a double for clipping and the NaN guard), `to_host` and `from_host`, and
// `upload` outside a capture. The step's numbers (lr, decay, clipping factor, bias corrections)
// are read by the kernels from the step block (muon::StepValues) that `upload` fills, never
// passed as kernel arguments, so Optimizer::apply() (the block's copy, momentum → Newton–Schulz →
// decay and scaled update, AdamW) captured once in a CUDA graph replays every later step right:
// run opt.begin_step(opt.check_gradients()) on the host, then launch the graph. The check costs one
// synchronisation per parameter; muon/backends/cuda_gradients.hpp does it with one in all.
//
// Newton–Schulz precision (CudaOptions::ns_precision):
//   bf16 (default, as KellerJordan/Muon, Moonlight and torch.optim.Muon): products take bf16
//     operands with fp32 accumulation and an fp32 result. Buffers stay fp32 (the concept's
//     type); each product rounds its operands to bf16 into the backend's scratch first, which
//     costs one O(n·m) pass per operand against the O(n²·m) product.
//   fp32: fp32 GEMMs, never TF32: every cuBLAS sequence pins CUBLAS_DEFAULT_MATH and gives a
//     caller's handle its own mode back (a PyTorch handle with allow_tf32 is in TF32 mode).
// Symmetric products (`gram`): one fp32 matrix uses cublasSsyrk; stacks, and bf16 (cuBLAS has no
// bf16 SYRK, and no batched SYRK at all), run one batched call over the upper-triangle tile pairs
// when the tiles are large enough to keep the GEMMs efficient (CudaOptions::symmetric_tile_min),
// else one strided-batched full GEMM; then mirror.
//
// The backend in files, by responsibility (all under muon/backends/cuda/, namespace detail but
// options.hpp): options.hpp (CudaOptions), arena_growth.hpp + arena.hpp (the scratch arena),
// context.hpp (stream, cuBLAS handle, math-mode guard), elementwise.hpp (the non-product
// operations), products.hpp (gemm, gram, the tile pairs), newton_schulz.hpp (the bf16 loop).
// This file is the class that ties them to the Backend concept: include it, not them.
//
// Include from .cu files (nvcc) only, and link muon::cuda.
//
//   muon::CudaBackend gpu;  // or muon::CudaBackend(stream, cublas_handle)
//   muon::Optimizer<muon::CudaBackend> opt(params_on_device, muon::Options{.lr = 4.2e-4}, gpu);
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/adamw.cuh"
#include "muon/backend.hpp"
#include "muon/backends/cuda/arena.hpp"
#include "muon/backends/cuda/context.hpp"
#include "muon/backends/cuda/elementwise.hpp"
#include "muon/backends/cuda/newton_schulz.hpp"
#include "muon/backends/cuda/options.hpp"
#include "muon/backends/cuda/products.hpp"
#include "muon/cuda_check.hpp"
#include "muon/orthogonalize.hpp"

namespace muon {

class CudaBackend {
 public:
  // Device memory for n floats, zero-filled, allocated and freed in the backend's stream order.
  class Buffer {
   public:
    Buffer() = default;
    Buffer(std::shared_ptr<detail::Context> context, std::int64_t n)
        : context_(std::move(context)), size_(static_cast<std::size_t>(n)) {
      if (n == 0) return;
      void* p = nullptr;
      cuda_check(cudaMallocAsync(&p, size_ * sizeof(float), context_->stream));
      data_ = static_cast<float*>(p);
      cuda_check(cudaMemsetAsync(data_, 0, size_ * sizeof(float), context_->stream));
    }
    Buffer(Buffer&& other) noexcept { swap(other); }
    Buffer& operator=(Buffer&& other) noexcept {
      Buffer(std::move(other)).swap(*this);
      return *this;
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() {
      if (data_ != nullptr) cudaFreeAsync(data_, context_->stream);
    }

    [[nodiscard]] std::span<float> span() { return {data_, size_}; }
    [[nodiscard]] std::span<const float> span() const { return {data_, size_}; }

   private:
    void swap(Buffer& other) noexcept {
      std::swap(context_, other.context_);
      std::swap(data_, other.data_);
      std::swap(size_, other.size_);
    }
    std::shared_ptr<detail::Context> context_;
    float* data_ = nullptr;
    std::size_t size_ = 0;
  };

  // A stream and a cuBLAS handle of its own, on the current device.
  CudaBackend() : CudaBackend(CudaOptions{}) {}
  explicit CudaBackend(CudaOptions options)
      : options_(options),
        context_(std::make_shared<detail::Context>(true, nullptr, nullptr, options.cublas_workspace_bytes)) {}
  // The caller's stream and handle (either may be null: the default stream; a handle of its own).
  // The backend sets the handle's stream and workspace; the caller keeps both alive meanwhile.
  CudaBackend(cudaStream_t stream, cublasHandle_t blas, CudaOptions options = {})
      : options_(options),
        context_(std::make_shared<detail::Context>(false, stream, blas, options.cublas_workspace_bytes)) {}

  [[nodiscard]] cudaStream_t stream() const { return context_->stream; }
  [[nodiscard]] cublasHandle_t cublas() const { return context_->blas; }
  [[nodiscard]] const CudaOptions& options() const { return options_; }

  [[nodiscard]] Buffer allocate(std::int64_t n) { return Buffer(context_, n); }

  // Pinned host memory for n floats, zero-filled: `upload` copies from it without waiting, and a
  // graph captures that copy as a memcpy node that reads it at every replay.
  class HostBuffer {
   public:
    HostBuffer() = default;
    explicit HostBuffer(std::int64_t n) : size_(static_cast<std::size_t>(n)) {
      if (n == 0) return;
      void* p = nullptr;
      cuda_check(cudaMallocHost(&p, size_ * sizeof(float)));
      data_.reset(static_cast<float*>(p));
      std::fill_n(data_.get(), size_, 0.0f);
    }
    [[nodiscard]] std::span<float> span() { return {data_.get(), size_}; }

   private:
    struct Free {
      void operator()(float* p) const noexcept { cudaFreeHost(p); }
    };
    std::unique_ptr<float, Free> data_;
    std::size_t size_ = 0;
  };
  [[nodiscard]] HostBuffer allocate_host(std::int64_t n) { return HostBuffer(n); }

  // C = α·op(A)·op(B) + β·C per matrix (muon/backends/cuda/products.hpp).
  void gemm(float alpha, MatrixStack<const float> a, Transpose ta, MatrixStack<const float> b, Transpose tb, float beta,
            MatrixStack<float> c) {
    detail::gemm(*context_, options_, alpha, a, ta, b, tb, beta, c);
  }
  // C = α·X·Xᵀ + β·C (side rows) or α·Xᵀ·X + β·C (side cols), C symmetric (products.hpp).
  void gram(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c) {
    detail::gram(*context_, options_, alpha, x, side, beta, c);
  }

  void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y) {
    detail::axpby(*context_, alpha, x, beta, y);
  }
  // Muon's decay and apply, W ← decay·W − (lr·scale)·O, with lr and decay read on the device.
  void update(std::span<float> w, std::span<const float> o, UpdateStep s) { detail::update(*context_, w, o.data(), s); }
  // The same from a bf16 update, beyond the concept: for callers that keep O in bf16.
  template <class X>
  void update(std::span<float> w, const X* o, UpdateStep s) {
    detail::update(*context_, w, o, s);
  }
  // Per matrix, on the device: X ← X·(1/(‖X‖+ε)) or X·(1/max(‖X‖, ε)).
  void normalize(MatrixStack<float> x, float eps, NormEps mode) { detail::normalize(*context_, x, eps, mode); }
  // NorMuon's per-row second moment and normalisation, one block per row.
  void normalize_rows(MatrixStack<float> x, std::span<float> v, RowNormStep s) {
    detail::normalize_rows(*context_, x, v, s);
  }

  // Optional capability (muon/orthogonalize.hpp, RunsNewtonSchulz): the whole Newton–Schulz of a
  // stack with bf16 storage, as the references run it (muon/backends/cuda/newton_schulz.hpp).
  // Returns false, doing nothing, in fp32 precision and for the shapes `options` sends to Gram
  // Newton–Schulz: the portable path runs those. Stacks run in chunks of ns_batch_limit matrices.
  [[nodiscard]] bool takes_newton_schulz(std::int64_t rows, std::int64_t cols, const NsOptions& o) const {
    return options_.ns_precision != NsPrecision::fp32 && !uses_gram_ns(o, rows, cols);
  }
  void newton_schulz(MatrixStack<float> x, const NsOptions& o) {
    const std::int64_t chunk = ns_batch_limit(x.rows, x.cols);
    for (std::int64_t k = 0; k < x.batch; k += chunk)
      detail::newton_schulz_chunk(*context_, options_,
                                  MatrixStack<float>{x.matrix(k), std::min(chunk, x.batch - k), x.rows, x.cols}, o);
  }
  // Optional capability (LimitsNsBatch): the matrices per batched call.
  [[nodiscard]] std::int64_t ns_batch_limit(std::int64_t rows, std::int64_t cols) const {
    return detail::ns_batch_limit(options_, rows, cols);
  }

  void momentum(std::span<float> m, std::span<const float> g, MomentumStep s, std::span<float> u) {
    detail::momentum(*context_, m, g, s, u);
  }

  void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v, AdamWStep s) {
    const kernels::AdamWTensor t{w.data(), g.data(), m.data(), v.data(), static_cast<std::int64_t>(w.size())};
    adamw_many(std::span(&t, 1), s);
  }
  // AdamW on many tensors with the same hyper-parameters, in as few launches as possible
  // (kernels/adamw.cuh). Beyond the concept.
  void adamw_many(std::span<const kernels::AdamWTensor> tensors, AdamWStep s) {
    kernels::launch_adamw(tensors, {s.beta1, s.beta2, s.eps}, s.values, context_->stream);
  }

  // Σ x² in double. The host needs the value, so this synchronises the stream: the one
  // synchronisation the optimizer's step makes (per gradient, in check_gradients).
  [[nodiscard]] double sum_squares(std::span<const float> x) { return detail::sum_squares(*context_, x); }
  // Copies each (from, to) pair, many per launch (ZeRO-1's pack and unpack: zero1.hpp).
  void copy_each(std::span<const std::pair<std::span<const float>, std::span<float>>> pairs) {
    detail::copy_each(*context_, pairs);
  }
  // Σ x² of each span, with one synchronisation for all (gradient checks: cuda_gradients.hpp, zero1.hpp).
  [[nodiscard]] std::vector<double> sum_squares_each(std::span<const std::span<const float>> xs) {
    return detail::sum_squares_each(*context_, xs);
  }
  // The same sums into device memory (sums.size() == xs.size()), without waiting: ZeRO-1 writes
  // them into the communicator's buffer, so that they reach the host with the all-reduce's one wait.
  void sum_squares_each(std::span<const std::span<const float>> xs, std::span<double> sums) {
    if (sums.size() != xs.size())
      throw ShapeMismatch("sum_squares_each: " + std::to_string(sums.size()) + " sums for " + std::to_string(xs.size()) + " spans");
    if (!xs.empty()) (void)detail::enqueue_sum_squares_each(*context_, xs, sums.data());
  }

  // *flag ← 1 on the device if x holds a NaN or Inf, else leaves it; clear it first with
  // clear_flag. No host synchronisation: a guard that a captured graph can carry.
  void flag_non_finite(std::span<const float> x, int* flag) { detail::flag_non_finite(*context_, x, flag); }
  void clear_flag(int* flag) { cuda_check(cudaMemsetAsync(flag, 0, sizeof(int), context_->stream)); }

  // Copies between device and host memory; both wait for the copy (the host buffer may go away).
  void to_host(std::span<const float> x, std::span<float> host) {
    if (x.empty()) return;
    cuda_check(cudaMemcpyAsync(host.data(), x.data(), x.size_bytes(), cudaMemcpyDeviceToHost, context_->stream));
    cuda_check(cudaStreamSynchronize(context_->stream));
  }
  void from_host(std::span<const float> host, std::span<float> y) {
    if (host.empty()) return;
    cuda_check(cudaMemcpyAsync(y.data(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice, context_->stream));
    cuda_check(cudaStreamSynchronize(context_->stream));
  }

  // The step block's copy from pinned memory (allocate_host), in stream order. Outside a capture
  // it waits, so the host may refill the memory for the next step at once; inside a capture it is
  // the graph's memcpy node, and each replay copies what the host wrote before launching it.
  void upload(std::span<const float> host, std::span<float> y) {
    if (host.empty()) return;
    cuda_check(cudaMemcpyAsync(y.data(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice, context_->stream));
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    cuda_check(cudaStreamIsCapturing(context_->stream, &status));
    if (status == cudaStreamCaptureStatusNone) cuda_check(cudaStreamSynchronize(context_->stream));
  }

  // At least `bytes` of the backend's scratch arena (device memory, 256-byte aligned), valid until
  // the next backend operation, which may reuse it: work on the backend's stream only. Growing
  // it allocates, so call it before a graph capture with the largest size the capture needs.
  [[nodiscard]] void* scratch(std::size_t bytes) { return context_->scratch_of(bytes); }
  // The arena's size, and the outgrown arenas kept because a graph captured while they were
  // current may still use them (an arena no capture saw is freed as soon as it is outgrown).
  [[nodiscard]] std::size_t scratch_bytes() const { return context_->scratch.bytes(); }
  [[nodiscard]] std::size_t retired_scratch_count() const { return context_->scratch.retired_count(); }
  // Frees those arenas, in stream order: call it once the graphs captured before the arena last
  // grew are destroyed (or will not be launched again).
  void release_retired_scratch() { context_->scratch.release_retired(context_->stream); }

 private:
  CudaOptions options_;
  std::shared_ptr<detail::Context> context_;
};

static_assert(Backend<CudaBackend> && RunsNewtonSchulz<CudaBackend> && LimitsNsBatch<CudaBackend>);

}  // namespace muon
