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
#include <span>
#include <vector>

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

// Many tensors in one launch (AdamW, the gradients' Σx²): every block owns one chunk of `chunk`
// elements of one tensor, and the table (the tensors, and the block where each begins) travels in
// the kernel's parameters, so a launch needs no device-side table and is capturable as is. Keep
// sizeof(MultiTensorLaunch) under the 4 KiB of parameters every architecture takes. Tensor: any
// struct with an element count `n`.
template <class Tensor, int kMaxTensors>
struct MultiTensorLaunch {
  static constexpr int kMax = kMaxTensors;
  Tensor tensors[kMaxTensors];
  std::int64_t first_block[kMaxTensors + 1];  // tensor k owns blocks [first_block[k], first_block[k+1])
  int count;

  [[nodiscard]] __host__ __device__ std::int64_t blocks() const { return first_block[count]; }
  // The tensor that block `block` works on (empty tensors own no block and are passed over).
  [[nodiscard]] __device__ int tensor_of(std::int64_t block) const {
    int k = 0;
    while (block >= first_block[k + 1]) ++k;  // ends: block < first_block[count]
    return k;
  }
};

// The launches for `tensors`, in order, Launch::kMax tensors each (the last may hold fewer), with
// `chunk` elements per block.
template <class Launch, class Tensor>
[[nodiscard]] std::vector<Launch> multi_tensor_launches(std::span<const Tensor> tensors, std::int64_t chunk) {
  std::vector<Launch> launches;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (i % Launch::kMax == 0) launches.push_back(Launch{});  // value-initialised: count 0, first_block[0] 0
    Launch& l = launches.back();
    l.tensors[l.count] = tensors[i];
    l.first_block[l.count + 1] = l.first_block[l.count] + (tensors[i].n + chunk - 1) / chunk;
    ++l.count;
  }
  return launches;
}

}  // namespace muon::kernels
