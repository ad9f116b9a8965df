// kernels/elementwise.cuh: the fused elementwise steps of Muon.
//
//   axpby:    y ← α·x + β·y, x fp32 or bf16.
//   update:   y ← decay·y − (lr·s)·x, x fp32 or bf16: Muon's fused decay-and-apply of the scaled
//             update, with lr and decay read from the step block (muon::StepValues) as it runs.
//   momentum: M ← μM + g·G (g = 1 for the sum form, 1−μ for EMA), and the Newton–Schulz input
//             U = g·G + μM (Nesterov) or U = M, with the clipping factor (from the step block)
//             applied to G on the fly.
//   convert:  fp32 ↔ bf16 (to bf16: round to nearest even, as torch's .bfloat16()).
// The arithmetic follows the Eigen backend's expressions term by term.
#pragma once

#include "kernels/launch.cuh"
#include "muon/backend.hpp"

namespace muon::kernels {

// β = 0 does not read y (it may hold NaN), as in BLAS; x may equal y.
template <class X>
__global__ void axpby_kernel(std::int64_t n, float alpha, const X* x, float beta, float* y) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride())
    y[i] = beta == 0.0f ? alpha * to_float(x[i]) : alpha * to_float(x[i]) + beta * y[i];
}

template <class X>
__global__ void update_kernel(std::int64_t n, double scale, const StepValues* values, const X* x, float* y) {
  const float alpha = -static_cast<float>(values->lr * scale), decay = values->decay;
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) y[i] = alpha * to_float(x[i]) + decay * y[i];
}

template <class G>
__global__ void momentum_kernel(std::int64_t n, float* m, const G* g, float mu, float gain, const StepValues* values,
                                bool nesterov, float* u) {
  const float grad_scale = values->grad_scale;
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) {
    const float gi = to_float(g[i]) * grad_scale;
    const float mi = mu * m[i] + gain * gi;
    m[i] = mi;
    u[i] = nesterov ? gain * gi + mu * mi : mi;
  }
}

template <class From, class To>
__global__ void convert_kernel(std::int64_t n, const From* __restrict__ x, To* __restrict__ y) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride()) y[i] = To(to_float(x[i]));
}

// Many copies in one launch (ZeRO-1's pack and unpack, muon/distributed/zero1.hpp): every block
// copies one chunk of one (from, to) pair; the table (about 2 KiB) travels in the parameters.
inline constexpr int kMultiCopyMaxTensors = 64;
inline constexpr std::int64_t kCopyChunk = 16 * kThreads;

struct CopyTensor {
  const float* from;
  float* to;
  std::int64_t n;
};
using CopyLaunch = MultiTensorLaunch<CopyTensor, kMultiCopyMaxTensors>;

template <int kBlock>
__global__ void __launch_bounds__(kBlock) multi_copy_kernel(CopyLaunch launch) {
  const std::int64_t block = blockIdx.x;
  const int k = launch.tensor_of(block);
  const CopyTensor& t = launch.tensors[k];
  const std::int64_t begin = (block - launch.first_block[k]) * kCopyChunk;
  const std::int64_t end = begin + kCopyChunk < t.n ? begin + kCopyChunk : t.n;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += kBlock) t.to[i] = t.from[i];
}

}  // namespace muon::kernels
