// muon/backends/cuda/elementwise.hpp: the CUDA backend's operations that are not products:
// axpby, update, momentum, normalize, normalize_rows, copy_each, sum_squares, sum_squares_each, flag_non_finite, and
// the conversions and copies the products use. Each enqueues kernels (kernels/elementwise.cuh,
// kernels/norms.cuh) on the context's stream; only the sums that return values to the host wait
// for the device. Internal (namespace detail): CudaBackend's members of the same names forward here.
//
//   detail::axpby(ctx, 1.0f, x, 0.0f, y);  // y ← x
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/elementwise.cuh"
#include "kernels/launch.cuh"
#include "kernels/norms.cuh"
#include "muon/backend.hpp"
#include "muon/backends/cuda/arena.hpp"
#include "muon/backends/cuda/context.hpp"
#include "muon/cuda_check.hpp"
#include "muon/error.hpp"

namespace muon::detail {

// Matrices of a stack per launch: the per-matrix kernels put the matrix index in gridDim.y or z.
inline unsigned grid_y(std::int64_t batch) {
  if (batch > 65535) throw InvalidArgument("CudaBackend: stacks of more than 65535 matrices are not supported");
  return static_cast<unsigned>(batch);
}

// fp32 → bf16, rounding to nearest even.
inline void to_bf16(Context& ctx, std::span<const float> x, __nv_bfloat16* out) {
  const auto n = static_cast<std::int64_t>(x.size());
  kernels::convert_kernel<float, __nv_bfloat16>
      <<<kernels::grid_for(n), kernels::kThreads, 0, ctx.stream>>>(n, x.data(), out);
  cuda_check(cudaGetLastError());
}

// Device-to-device copy of `count` elements, in stream order.
template <class T>
void copy(Context& ctx, T* to, const T* from, std::int64_t count) {
  cuda_check(
      cudaMemcpyAsync(to, from, static_cast<std::size_t>(count) * sizeof(T), cudaMemcpyDeviceToDevice, ctx.stream));
}

inline void axpby(Context& ctx, float alpha, std::span<const float> x, float beta, std::span<float> y) {
  if (y.empty()) return;
  const auto n = static_cast<std::int64_t>(y.size());
  kernels::axpby_kernel<float>
      <<<kernels::grid_for(n), kernels::kThreads, 0, ctx.stream>>>(n, alpha, x.data(), beta, y.data());
  cuda_check(cudaGetLastError());
}

// Muon's decay and apply, W ← decay·W − (lr·scale)·O, with lr and decay read from the step block
// on the device; O fp32 or bf16.
template <class X>
void update(Context& ctx, std::span<float> w, const X* o, UpdateStep s) {
  if (w.empty()) return;
  const auto n = static_cast<std::int64_t>(w.size());
  kernels::update_kernel<X>
      <<<kernels::grid_for(n), kernels::kThreads, 0, ctx.stream>>>(n, s.scale, s.values, o, w.data());
  cuda_check(cudaGetLastError());
}

inline void momentum(Context& ctx, std::span<float> m, std::span<const float> g, MomentumStep s, std::span<float> u) {
  if (m.empty()) return;
  const auto n = static_cast<std::int64_t>(m.size());
  const float gain = s.form == MomentumForm::sum ? 1.0f : 1.0f - s.mu;  // weight of G in the buffer
  kernels::momentum_kernel<float><<<kernels::grid_for(n), kernels::kThreads, 0, ctx.stream>>>(
      n, m.data(), g.data(), s.mu, gain, s.values, s.nesterov, u.data());
  cuda_check(cudaGetLastError());
}

// Writes 1/(‖X_k‖+ε) or 1/max(‖X_k‖, ε) to inverse[k]; partial holds batch·norm_parts doubles.
inline void inverse_norms(Context& ctx, MatrixStack<const float> x, float eps, NormEps mode, double* partial,
                          float* inverse) {
  const int parts = kernels::norm_parts(x.matrix_size());
  kernels::sum_squares_partial_kernel<float, kernels::kThreads>
      <<<dim3(static_cast<unsigned>(parts), grid_y(x.batch)), kernels::kThreads, 0, ctx.stream>>>(
          x.data, x.matrix_size(), partial);
  cuda_check(cudaGetLastError());
  kernels::finish_norms_kernel<kernels::kThreads><<<static_cast<unsigned>(x.batch), kernels::kThreads, 0, ctx.stream>>>(
      partial, parts, nullptr, inverse, eps, mode == NormEps::max);
  cuda_check(cudaGetLastError());
}

template <class Y>
void scale_matrices(Context& ctx, const float* x, std::int64_t batch, std::int64_t matrix_size, const float* factor,
                    Y* y) {
  kernels::scale_matrices_kernel<float, Y>
      <<<dim3(kernels::grid_for(matrix_size), grid_y(batch)), kernels::kThreads, 0, ctx.stream>>>(x, matrix_size,
                                                                                                  factor, y);
  cuda_check(cudaGetLastError());
}

// Per matrix, on the device: ‖X‖_F (kernels/norms.cuh), then X ← X·(1/(‖X‖+ε)) or
// X·(1/max(‖X‖, ε)); the factors stay on the device and feed the scaling kernel directly.
inline void normalize(Context& ctx, MatrixStack<float> x, float eps, NormEps mode) {
  if (x.size() == 0) return;
  const int parts = kernels::norm_parts(x.matrix_size());
  Carver measure;
  (void)measure.take<double>(x.batch * parts);
  (void)measure.take<float>(x.batch);
  Carver carve(static_cast<char*>(ctx.scratch_of(measure.bytes())));
  double* partial = carve.take<double>(x.batch * parts);
  float* inverse = carve.take<float>(x.batch);
  inverse_norms(ctx, x.as_const(), eps, mode, partial, inverse);
  scale_matrices(ctx, x.data, x.batch, x.matrix_size(), inverse, x.data);
}

// NorMuon's per-row normalisation (muon::RowNormStep), one block per row.
inline void normalize_rows(Context& ctx, MatrixStack<float> x, std::span<float> v, RowNormStep s) {
  const std::int64_t rows = x.batch * x.rows;
  if (std::ssize(v) != rows)
    throw ShapeMismatch("normalize_rows: " + std::to_string(v.size()) + " second moments for " + std::to_string(rows) +
                        " rows");
  if (rows == 0 || x.cols == 0) return;
  if (rows > 0x7fffffff) throw InvalidArgument("normalize_rows: more than 2^31 rows in one stack");
  kernels::normalize_rows_kernel<kernels::kRowNormThreads>
      <<<static_cast<unsigned>(rows), kernels::kRowNormThreads, 0, ctx.stream>>>(x.data, x.cols, v.data(), s.beta2,
                                                                                 s.eps);
  cuda_check(cudaGetLastError());
}

// Copies each (from, to) pair of equal sizes, all in one multi-tensor launch per 64 pairs.
inline void copy_each(Context& ctx, std::span<const std::pair<std::span<const float>, std::span<float>>> pairs) {
  std::vector<kernels::CopyTensor> tensors;
  tensors.reserve(pairs.size());
  for (const auto& pair : pairs) {
    if (pair.first.size() != pair.second.size())
      throw ShapeMismatch("copy_each: a copy of " + std::to_string(pair.first.size()) + " floats into " +
                          std::to_string(pair.second.size()));
    tensors.push_back({pair.first.data(), pair.second.data(), static_cast<std::int64_t>(pair.first.size())});
  }
  for (const kernels::CopyLaunch& l :
       kernels::multi_tensor_launches<kernels::CopyLaunch>(std::span<const kernels::CopyTensor>(tensors), kernels::kCopyChunk)) {
    const std::int64_t blocks = l.blocks();
    if (blocks > 0x7fffffff) throw InvalidArgument("copy_each: a copy larger than 2^43 elements");
    if (blocks == 0) continue;
    kernels::multi_copy_kernel<kernels::kThreads><<<static_cast<unsigned>(blocks), kernels::kThreads, 0, ctx.stream>>>(l);
    cuda_check(cudaGetLastError());
  }
}

// sums[i] ← Σ x² in double of span i, on the device, without waiting: multi-tensor kernels
// (kernels/norms.cuh) write the partial sums into the scratch arena, then one sum per span (0 for
// an empty one) into `sums`, or after the partial sums when `sums` is null. Returns where the
// sums are.
inline double* enqueue_sum_squares_each(Context& ctx, std::span<const std::span<const float>> xs, double* sums) {
  std::vector<kernels::SumSquaresTensor> tensors;
  tensors.reserve(xs.size());
  for (const std::span<const float> x : xs) tensors.push_back({x.data(), static_cast<std::int64_t>(x.size())});
  const auto launches = kernels::multi_tensor_launches<kernels::SumSquaresLaunch>(
      std::span<const kernels::SumSquaresTensor>(tensors), kernels::kSumSquaresChunk);
  std::int64_t partials = 0;  // blocks over all launches: the partial sums laid end to end
  for (const auto& l : launches) partials += l.blocks();
  const std::int64_t in_scratch = sums == nullptr ? static_cast<std::int64_t>(xs.size()) : 0;
  Carver measure;
  (void)measure.take<double>(partials);
  (void)measure.take<double>(in_scratch);
  Carver carve(static_cast<char*>(ctx.scratch_of(measure.bytes())));
  double* partial = carve.take<double>(partials);
  if (sums == nullptr) sums = carve.take<double>(in_scratch);
  std::int64_t offset = 0;
  for (std::size_t g = 0; g < launches.size(); ++g) {
    const kernels::SumSquaresLaunch& l = launches[g];
    const std::int64_t blocks = l.blocks();
    if (blocks > 0x7fffffff) throw InvalidArgument("sum_squares_each: a span larger than 2^45 elements");
    if (blocks > 0)
      kernels::multi_sum_squares_kernel<kernels::kThreads>
          <<<static_cast<unsigned>(blocks), kernels::kThreads, 0, ctx.stream>>>(l, partial + offset);
    cuda_check(cudaGetLastError());
    kernels::finish_multi_sum_squares_kernel<kernels::kThreads>
        <<<static_cast<unsigned>(l.count), kernels::kThreads, 0, ctx.stream>>>(l, partial + offset,
                                                                              sums + g * kernels::kMultiMaxTensors);
    cuda_check(cudaGetLastError());
    offset += blocks;
  }
  return sums;
}

// The same sums on the host, with one host synchronisation for all of them (cuda_gradients.hpp).
[[nodiscard]] inline std::vector<double> sum_squares_each(Context& ctx, std::span<const std::span<const float>> xs) {
  std::vector<double> host(xs.size());
  if (host.empty()) return host;
  const double* sums = enqueue_sum_squares_each(ctx, xs, nullptr);
  cuda_check(cudaMemcpyAsync(host.data(), sums, host.size() * sizeof(double), cudaMemcpyDeviceToHost, ctx.stream));
  cuda_check(cudaStreamSynchronize(ctx.stream));
  return host;
}

// Σ x² in double. The host needs the value, so this synchronises the stream: the one
// synchronisation the optimizer's step makes (per gradient, in check_gradients).
[[nodiscard]] inline double sum_squares(Context& ctx, std::span<const float> x) {
  if (x.empty()) return 0.0;
  const auto n = static_cast<std::int64_t>(x.size());
  const int parts = kernels::norm_parts(n);
  Carver measure;
  (void)measure.take<double>(parts);
  (void)measure.take<double>(1);
  Carver carve(static_cast<char*>(ctx.scratch_of(measure.bytes())));
  double* partial = carve.take<double>(parts);
  double* total = carve.take<double>(1);
  kernels::sum_squares_partial_kernel<float, kernels::kThreads>
      <<<dim3(static_cast<unsigned>(parts), 1), kernels::kThreads, 0, ctx.stream>>>(x.data(), n, partial);
  cuda_check(cudaGetLastError());
  kernels::finish_norms_kernel<kernels::kThreads>
      <<<1, kernels::kThreads, 0, ctx.stream>>>(partial, parts, total, nullptr, 0.0f, false);
  cuda_check(cudaGetLastError());
  double result = 0.0;
  cuda_check(cudaMemcpyAsync(&result, total, sizeof(double), cudaMemcpyDeviceToHost, ctx.stream));
  cuda_check(cudaStreamSynchronize(ctx.stream));
  return result;
}

// *flag ← 1 on the device if x holds a NaN or Inf, else leaves it; clear it first with
// clear_flag. No host synchronisation: a guard that a captured graph can carry.
inline void flag_non_finite(Context& ctx, std::span<const float> x, int* flag) {
  if (x.empty()) return;
  const auto n = static_cast<std::int64_t>(x.size());
  kernels::flag_non_finite_kernel<float><<<kernels::grid_for(n), kernels::kThreads, 0, ctx.stream>>>(n, x.data(), flag);
  cuda_check(cudaGetLastError());
}

}  // namespace muon::detail
