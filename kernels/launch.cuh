// kernels/launch.cuh: launch geometry and small device helpers shared by the kernels.
//
// Elementwise kernels use grid-stride loops: the grid fills the GPU a few times over and each
// thread walks the rest, so one launch shape serves every size. Everything here is a template or
// `inline`, so that several translation units may include the headers and still link.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace muon::kernels {

inline constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements, about `per_thread` elements per thread, capped so
// that a huge tensor does not launch millions of blocks that each do a few elements.
[[nodiscard]] inline unsigned grid_for(std::int64_t n, int per_thread = 4) {
  const std::int64_t per_block = std::int64_t{kThreads} * per_thread;
  return static_cast<unsigned>(std::clamp<std::int64_t>((n + per_block - 1) / per_block, 1, 1 << 16));
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ std::int64_t global_thread() { return std::int64_t{blockIdx.x} * blockDim.x + threadIdx.x; }
__device__ __forceinline__ std::int64_t grid_stride() { return std::int64_t{gridDim.x} * blockDim.x; }

// Sum over a block of kBlock threads; the result is valid in thread 0. Call once per kernel
// (the shared array is reused without a second barrier).
template <int kBlock>
__device__ double block_sum(double v) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "block_sum: the block must be whole warps");
  __shared__ double warp_sums[kBlock / 32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp != 0) return 0.0;
  v = lane < kBlock / 32 ? warp_sums[lane] : 0.0;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace muon::kernels
