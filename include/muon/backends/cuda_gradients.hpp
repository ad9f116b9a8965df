// muon/backends/cuda_gradients.hpp: the optimizer's gradient check with one host synchronisation.
//
// Optimizer::check_gradients() calls the backend's sum_squares once per parameter, and on the
// GPU each call waits for its result: thousands of round trips for a Moonlight-sized table.
// check_gradients_on_device computes every gradient's Σx² on the device
// (CudaBackend::sum_squares_each: multi-tensor kernels) and copies them back at once; its result goes to Optimizer::step(check) or
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
  std::vector<std::span<const float>> grads;
  grads.reserve(params.size());
  for (const Parameter& p : params) {
    check_gradient(p);
    grads.emplace_back(p.grad.span());
  }
  const std::vector<double> sums = gpu.sum_squares_each(grads);
  GradientCheck check;
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!std::isfinite(sums[i])) {
      check.non_finite = params[i].name;
      return check;
    }
    check.sum_squares += sums[i];
  }
  return check;
}

}  // namespace muon
