// kernels/adamw.cuh: AdamW over many tensors in one launch.
//
// A multi-tensor launch (kernels/launch.cuh): every block owns one chunk of kAdamWChunk elements
// of one tensor, the table of up to kAdamWMaxTensors tensors (about 2.3 KiB) in the kernel's
// parameters; longer lists are split into several launches. The arithmetic is the Eigen
// backend's, in its order: W ← W·(1 − lr·wd) − (lr/bc1)·m/(√v/√bc2 + ε).
#pragma once

#include <algorithm>
#include <span>

#include "kernels/launch.cuh"
#include "muon/backend.hpp"
#include "muon/cuda_check.hpp"

namespace muon::kernels {

struct AdamWTensor {
  float* w;
  const float* g;
  float* m;
  float* v;
  std::int64_t n;
};

// The hyper-parameters that stay; the step's numbers (step size lr/(1 − β₁ᵗ), √(1 − β₂ᵗ), the
// decay 1 − lr·wd and the clipping factor) are read from the step block as the kernel runs.
struct AdamWConstants {
  float beta1, beta2, eps;
};

inline constexpr int kAdamWMaxTensors = 48;
inline constexpr std::int64_t kAdamWChunk = 16 * kThreads;

using AdamWLaunch = MultiTensorLaunch<AdamWTensor, kAdamWMaxTensors>;

template <int kBlock>
__global__ void __launch_bounds__(kBlock) adamw_kernel(AdamWLaunch launch, AdamWConstants s,
                                                             const StepValues* values) {
  const float step_size = values->adamw_step_size, bc2_sqrt = values->adamw_bc2_sqrt, decay = values->decay,
              grad_scale = values->grad_scale;
  const std::int64_t block = blockIdx.x;
  const int k = launch.tensor_of(block);
  const AdamWTensor& t = launch.tensors[k];
  const std::int64_t begin = (block - launch.first_block[k]) * kAdamWChunk;
  const std::int64_t end = begin + kAdamWChunk < t.n ? begin + kAdamWChunk : t.n;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += kBlock) {
    const float g = t.g[i] * grad_scale;
    float m = t.m[i], v = t.v[i];
    m += (g - m) * (1.0f - s.beta1);
    v = v * s.beta2 + (1.0f - s.beta2) * g * g;
    t.m[i] = m;
    t.v[i] = v;
    t.w[i] = t.w[i] * decay - step_size * (m / (sqrtf(v) / bc2_sqrt + s.eps));
  }
}

// Launches as few kernels as the list allows on `stream`. Throws CudaError
// (muon/cuda_check.hpp) when a launch fails.
inline void launch_adamw(std::span<const AdamWTensor> tensors, const AdamWConstants& s, const StepValues* values,
                         cudaStream_t stream) {
  for (const AdamWLaunch& launch : multi_tensor_launches<AdamWLaunch>(tensors, kAdamWChunk)) {
    const std::int64_t blocks = launch.blocks();
    if (blocks == 0) continue;
    if (blocks > 0x7fffffff) cuda_check(cudaErrorInvalidValue);  // > 2³¹ blocks: 17 Tera-elements
    adamw_kernel<kThreads><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(launch, s, values);
    cuda_check(cudaGetLastError());
  }
}

}  // namespace muon::kernels
