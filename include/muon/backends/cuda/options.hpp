// muon/backends/cuda/options.hpp: the CUDA backend's options (precision, symmetric products,
// cuBLAS workspace, Newton–Schulz batch size). Plain C++: no CUDA header needed.
//
//   muon::CudaBackend gpu(muon::CudaOptions{.ns_precision = muon::NsPrecision::fp32});
#pragma once

#include <cstddef>
#include <cstdint>

#include "muon/orthogonalize.hpp"

namespace muon {

// How the tile pairs of a symmetric product go to cuBLAS (CudaOptions::tile_gemm):
//   pointer_array:    one cublasGemmBatchedEx over every pair of every matrix, its pointer
//                     arrays written on the device (two launches in all, whatever the tiles);
//   strided_per_pair: one cublasGemmStridedBatchedEx per tile pair over the stack (T(T+1)/2
//                     launches, no pointer arrays: cuBLAS knows the operands are evenly spaced).
// Untuned: bench/bench_cuda.cu's BM_cuda_gram times both against one full GEMM (tiles = 1).
enum class SymmetricTileGemm { pointer_array, strided_per_pair };

struct CudaOptions {
  NsPrecision ns_precision = NsPrecision::bf16;  // automatic is bf16 too: every GPU this targets has it
  // bf16 `gram` splits the n×n result into tiles of side n/T (T = 4 or 2, the tile a multiple of
  // 64) and computes only the T(T+1)/2 upper tile pairs when a tile is at least this big; smaller
  // tiles lose more GEMM efficiency than the 25–37% of flops they save. Untuned: measure on the GPU.
  std::int64_t symmetric_tile_min = 512;
  SymmetricTileGemm tile_gemm = SymmetricTileGemm::pointer_array;
  std::size_t cublas_workspace_bytes = std::size_t{32} << 20;  // cuBLAS's recommendation for Hopper
  // The most elements (matrices × rows × cols) one batched Newton–Schulz call takes; a larger
  // stack runs in chunks. Bounds the scratch and the NsWorkspace (about 6 GiB at 2²⁸) while a
  // layer's 64 experts [64, 1408, 2048] (185 M elements) still go in one call.
  std::int64_t ns_batch_elements = std::int64_t{1} << 28;
};

}  // namespace muon
