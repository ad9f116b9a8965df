// muon/backends/cuda_gradients.hpp: the optimizer's gradient check with one host synchronisation.
//
// Optimizer::check_gradients() calls the backend's sum_squares once per parameter, and on the
// GPU each call waits for its result: thousands of round trips for a Moonlight-sized table.
// check_gradients_on_device computes every gradient's Σx² on the device (multi-tensor kernels,
// kernels/norms.cuh) and copies them back at once; its result goes to Optimizer::step(check) or
// Optimizer::begin_step(check) before a captured apply().
//
//   muon::Optimizer<muon::CudaBackend> opt(params, options, gpu);
//   opt.step(muon::check_gradients_on_device(opt.backend(), opt.parameters()));
#pragma once

#include <cmath>
#include <span>
#include <vector>

#include "muon/backends/cuda.hpp"
#include "muon/optimizer.hpp"
#include "muon/parameter.hpp"

namespace muon {

// What Optimizer::check_gradients() returns, for the same table: the total Σx² over all
// gradients and the first parameter (in table order) whose gradient holds NaN or Inf.
[[nodiscard]] inline GradientCheck check_gradients_on_device(CudaBackend& gpu, std::span<const Parameter> params) {
  std::vector<kernels::SumSquaresTensor> grads;
  grads.reserve(params.size());
  for (const Parameter& p : params) {
    check_gradient(p);
    grads.push_back({p.grad.data, p.grad.size()});
  }
  const auto launches = kernels::multi_tensor_launches<kernels::SumSquaresLaunch>(
      std::span<const kernels::SumSquaresTensor>(grads), kernels::kSumSquaresChunk);
  std::int64_t partials = 0;  // blocks over all launches: the partial sums laid end to end
  for (const auto& l : launches) partials += l.blocks();
  // Scratch: the partial sums, then one Σx² per parameter.
  const std::size_t partial_bytes = (static_cast<std::size_t>(partials) * sizeof(double) + 255) / 256 * 256;
  char* scratch = static_cast<char*>(gpu.scratch(partial_bytes + params.size() * sizeof(double)));
  auto* partial = reinterpret_cast<double*>(scratch);
  auto* sums = reinterpret_cast<double*>(scratch + partial_bytes);
  std::int64_t offset = 0;
  for (std::size_t g = 0; g < launches.size(); ++g) {
    const kernels::SumSquaresLaunch& l = launches[g];
    const std::int64_t blocks = l.blocks();
    if (blocks > 0x7fffffff) throw InvalidArgument("check_gradients_on_device: a gradient larger than 2^45 elements");
    if (blocks > 0)
      kernels::multi_sum_squares_kernel<kernels::kThreads>
          <<<static_cast<unsigned>(blocks), kernels::kThreads, 0, gpu.stream()>>>(l, partial + offset);
    muon::cuda_check(cudaGetLastError());
    kernels::finish_multi_sum_squares_kernel<kernels::kThreads>
        <<<static_cast<unsigned>(l.count), kernels::kThreads, 0, gpu.stream()>>>(l, partial + offset,
                                                                                 sums + g * kernels::kMultiMaxTensors);
    muon::cuda_check(cudaGetLastError());
    offset += blocks;
  }
  std::vector<double> host(params.size());
  if (!host.empty()) {
    muon::cuda_check(
        cudaMemcpyAsync(host.data(), sums, host.size() * sizeof(double), cudaMemcpyDeviceToHost, gpu.stream()));
    muon::cuda_check(cudaStreamSynchronize(gpu.stream()));
  }
  GradientCheck check;
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!std::isfinite(host[i])) {
      check.non_finite = params[i].name;
      return check;
    }
    check.sum_squares += host[i];
  }
  return check;
}

}  // namespace muon
