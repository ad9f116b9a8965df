// kernels/norms.cuh: per-matrix Frobenius norms of a stack, kept on the device, and the finite flag.
//
// Two passes, no host synchronisation: sum_squares_partial_kernel writes one double per block
// (grid: parts × matrices), finish_norms_kernel adds each matrix's parts and writes its Σx²
// and/or the inverse normalisation factor 1/(‖X‖+ε) or 1/max(‖X‖, ε) to device memory, where
// scale_rows_kernel (or the next product's scale) reads it. Squares are summed in double, so one
// NaN or Inf shows as a non-finite sum, as the Eigen backend's sum_squares does.
#pragma once

#include "kernels/launch.cuh"

namespace muon::kernels {

inline constexpr int kMaxNormParts = 256;

// Blocks per matrix for sum_squares_partial_kernel: about 16 elements per thread, at most 256.
[[nodiscard]] inline int norm_parts(std::int64_t matrix_size) {
  const std::int64_t per_block = std::int64_t{kThreads} * 16;
  return static_cast<int>(std::clamp<std::int64_t>((matrix_size + per_block - 1) / per_block, 1, kMaxNormParts));
}

// partial[k·parts + p] = Σ x² over the elements of matrix k that block (p, k) visits.
template <class T, int kBlock>
__global__ void __launch_bounds__(kBlock)
    sum_squares_partial_kernel(const T* x, std::int64_t matrix_size, double* partial) {
  const T* xk = x + std::int64_t{blockIdx.y} * matrix_size;
  double s = 0.0;
  for (std::int64_t i = global_thread(); i < matrix_size; i += grid_stride()) {
    const double v = to_float(xk[i]);
    s += v * v;
  }
  s = block_sum<kBlock>(s);
  if (threadIdx.x == 0) partial[std::int64_t{blockIdx.y} * gridDim.x + blockIdx.x] = s;
}

// One block per matrix k: adds its `parts` partial sums. Writes sums[k] = Σx² if sums is not null,
// and inverse[k] = 1/(‖X‖+ε) (eps_max false) or 1/max(‖X‖, ε) (eps_max true) if inverse is not null.
template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    finish_norms_kernel(const double* partial, int parts, double* sums, float* inverse, float eps, bool eps_max) {
  const double* pk = partial + std::int64_t{blockIdx.x} * parts;
  double s = 0.0;
  for (int p = static_cast<int>(threadIdx.x); p < parts; p += kBlock) s += pk[p];
  s = block_sum<kBlock>(s);
  if (threadIdx.x != 0) return;
  if (sums != nullptr) sums[blockIdx.x] = s;
  if (inverse != nullptr) {
    const double norm = sqrt(s);
    const double denom = eps_max ? fmax(norm, double{eps}) : norm + eps;
    inverse[blockIdx.x] = static_cast<float>(1.0 / denom);
  }
}

// Y_k ← X_k · factor[k] for every matrix k of the stack (grid: blocks × matrices); Y may be X,
// or a bf16 copy (the normalisation fused with the cast that starts a bf16 Newton–Schulz).
template <class X, class Y>
__global__ void scale_matrices_kernel(const X* x, std::int64_t matrix_size, const float* factor, Y* y) {
  const std::int64_t offset = std::int64_t{blockIdx.y} * matrix_size;
  const float f = factor[blockIdx.y];
  for (std::int64_t i = global_thread(); i < matrix_size; i += grid_stride())
    y[offset + i] = Y(to_float(x[offset + i]) * f);
}

// NorMuon's per-row normalisation (muon::RowNormStep): one block per row of the stack (all its
// matrices' rows back to back, so v[blockIdx.x] is that row's second moment). Σx² in double, the
// new v in double rounded to float once, the factor 1/(√v + ε) rounded to float: the Eigen
// backend's arithmetic. One block per row keeps the row's reduction and its scaling in one launch.
inline constexpr int kRowNormThreads = 128;
template <int kBlock>
__global__ void __launch_bounds__(kBlock) normalize_rows_kernel(float* x, std::int64_t cols, float* v, float beta2, float eps) {
  float* row = x + std::int64_t{blockIdx.x} * cols;
  double s = 0.0;
  for (std::int64_t j = threadIdx.x; j < cols; j += kBlock) {
    const double e = row[j];
    s += e * e;
  }
  s = block_sum<kBlock>(s);
  __shared__ float factor;
  if (threadIdx.x == 0) {
    const double mean = s / static_cast<double>(cols);
    const auto vr = static_cast<float>(double{beta2} * v[blockIdx.x] + (1.0 - double{beta2}) * mean);
    v[blockIdx.x] = vr;
    factor = static_cast<float>(1.0 / (sqrt(double{vr}) + eps));
  }
  __syncthreads();
  for (std::int64_t j = threadIdx.x; j < cols; j += kBlock) row[j] *= factor;
}

// *flag ← 1 if any element is NaN or ±Inf; the caller clears it first. Every writer stores the
// same value, so the race is benign and no atomics are needed.
template <class T>
__global__ void flag_non_finite_kernel(std::int64_t n, const T* x, int* flag) {
  for (std::int64_t i = global_thread(); i < n; i += grid_stride())
    if (!isfinite(to_float(x[i]))) *flag = 1;
}

// Σx² of many tensors with one multi-tensor launch (kernels/launch.cuh) per kMultiMaxTensors:
// each block reduces one chunk of one tensor into partial[block]; finish_multi_sum_squares_kernel
// then adds each tensor's chunks (the table is about 1.5 KiB).
inline constexpr int kMultiMaxTensors = 64;
inline constexpr std::int64_t kSumSquaresChunk = 64 * kThreads;

struct SumSquaresTensor {
  const float* x;
  std::int64_t n;
};
using SumSquaresLaunch = MultiTensorLaunch<SumSquaresTensor, kMultiMaxTensors>;

template <int kBlock>
__global__ void __launch_bounds__(kBlock) multi_sum_squares_kernel(SumSquaresLaunch launch, double* partial) {
  const std::int64_t block = blockIdx.x;
  const int k = launch.tensor_of(block);
  const SumSquaresTensor& t = launch.tensors[k];
  const std::int64_t begin = (block - launch.first_block[k]) * kSumSquaresChunk;
  const std::int64_t end = begin + kSumSquaresChunk < t.n ? begin + kSumSquaresChunk : t.n;
  double s = 0.0;
  for (std::int64_t i = begin + threadIdx.x; i < end; i += kBlock) {
    const double v = t.x[i];
    s += v * v;
  }
  s = block_sum<kBlock>(s);
  if (threadIdx.x == 0) partial[block] = s;
}

// One block per tensor k: sums[k] = Σ partial over its blocks (0 for an empty tensor).
template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    finish_multi_sum_squares_kernel(SumSquaresLaunch launch, const double* partial, double* sums) {
  const int k = static_cast<int>(blockIdx.x);
  double s = 0.0;
  for (std::int64_t b = launch.first_block[k] + threadIdx.x; b < launch.first_block[k + 1]; b += kBlock)
    s += partial[b];
  s = block_sum<kBlock>(s);
  if (threadIdx.x == 0) sums[k] = s;
}

}  // namespace muon::kernels
