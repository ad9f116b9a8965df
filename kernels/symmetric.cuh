// kernels/symmetric.cuh: helpers for symmetric products (X·Xᵀ, A² = A·Aᵀ) on cuBLAS.
//
// cuBLAS has SYRK for fp32 only and no bf16 SYRK, so a bf16 Gram matrix is computed as a batch
// of GEMMs over the tile pairs (P, Q), P ≤ Q, of the column-major result: tile_pair_pointers_kernel
// writes the pointer arrays for cublasGemmBatchedEx from the base pointers on the device (so the
// call is capturable and needs no host-to-device copy). Both paths leave one triangle; in the
// row-major view the library uses, that is the lower one, and mirror_lower_kernel copies it onto
// the upper triangle.
#pragma once

#include "kernels/launch.cuh"

namespace muon::kernels {

inline constexpr int kMirrorTile = 32;

// For each n×n row-major matrix of the stack (grid: tiles × tiles × matrices, block 32×8):
// C[i][j] ← C[j][i] for j > i. Reads go through shared memory so that both the read of the
// lower tile and the write of its transpose are coalesced.
template <class T>
__global__ void mirror_lower_kernel(T* c, std::int64_t n) {
  __shared__ T tile[kMirrorTile][kMirrorTile + 1];      // +1: no shared-memory bank conflicts
  const std::int64_t bi = blockIdx.y, bj = blockIdx.x;  // the target tile, in the upper triangle
  if (bj < bi) return;
  T* ck = c + std::int64_t{blockIdx.z} * n * n;
  const int tx = static_cast<int>(threadIdx.x);
  for (int r = static_cast<int>(threadIdx.y); r < kMirrorTile; r += static_cast<int>(blockDim.y)) {
    const std::int64_t row = bj * kMirrorTile + r, col = bi * kMirrorTile + tx;  // source tile (bj, bi)
    if (row < n && col < n) tile[r][tx] = ck[row * n + col];
  }
  __syncthreads();
  for (int r = static_cast<int>(threadIdx.y); r < kMirrorTile; r += static_cast<int>(blockDim.y)) {
    const std::int64_t row = bi * kMirrorTile + r, col = bj * kMirrorTile + tx;
    if (row < n && col < n && col > row) ck[row * n + col] = tile[tx][r];  // C[col][row]
  }
}

// Pointer arrays for the tile-pair GEMMs of a Gram stack. Entry e = k·pairs + pair, with the pairs
// (P, Q), P ≤ Q < tiles, numbered column by column: (0,0), (0,1), (1,1), (0,2), ...
//   a[e] = x + k·x_stride + P·tile_step,  b[e] = x + k·x_stride + Q·tile_step,
//   c[e] = c + k·c_stride + P·t + Q·t·ldc   (tile (P, Q) of the column-major result).
// tile_step is how far apart consecutive tiles of the operand are (t·cols for X·Xᵀ, t for Xᵀ·X).
template <class T, class C>
__global__ void tile_pair_pointers_kernel(const T* x, std::int64_t x_stride, std::int64_t tile_step, C* c,
                                          std::int64_t c_stride, std::int64_t ldc, std::int64_t t, int pairs,
                                          std::int64_t entries, const void** a, const void** b, void** out) {
  const std::int64_t e = global_thread();
  if (e >= entries) return;
  const std::int64_t k = e / pairs;
  int p = static_cast<int>(e % pairs), q = 0;
  while (p > q) {  // column q holds pairs (0..q, q): q + 1 of them
    p -= q + 1;
    ++q;
  }
  const T* xk = x + k * x_stride;
  a[e] = xk + p * tile_step;
  b[e] = xk + q * tile_step;
  out[e] = c + k * c_stride + p * t + q * t * ldc;
}

}  // namespace muon::kernels
