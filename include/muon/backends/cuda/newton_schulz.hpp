// muon/backends/cuda/newton_schulz.hpp: the bf16 Newton–Schulz loop of the CUDA backend (its
// RunsNewtonSchulz capability, muon/orthogonalize.hpp). X is normalised on the device and cast to
// bf16 in one pass; every iteration is three cuBLAS calls with the epilogues in α/β:
//   A = X·Xᵀ (symmetric: tile pairs + mirror); B = c·A·A + b·A (A·A = A·Aᵀ, symmetric too, onto
//   a copy of A); X' = a·X + B·X (onto a copy of X);
// and X is cast back to fp32 at the end. X, A and B stay in bf16 between the products (the
// portable loop in muon/orthogonalize.hpp rounds fp32 buffers to bf16 before every product
// instead). Tall matrices iterate on Xᵀ·X and multiply from the right, with no transposition.
// Internal (namespace detail): CudaBackend::newton_schulz runs it in chunks of ns_batch_limit.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "kernels/elementwise.cuh"
#include "kernels/norms.cuh"
#include "muon/backends/cuda/context.hpp"
#include "muon/backends/cuda/elementwise.hpp"
#include "muon/backends/cuda/options.hpp"
#include "muon/backends/cuda/products.hpp"
#include "muon/orthogonalize.hpp"

namespace muon::detail {

// The matrices per batched call, at most 65535 (the per-matrix kernels put the matrix index in
// gridDim.y or z).
[[nodiscard]] inline std::int64_t ns_batch_limit(const CudaOptions& options, std::int64_t rows, std::int64_t cols) {
  return std::clamp<std::int64_t>(options.ns_batch_elements / std::max<std::int64_t>(1, rows * cols), 1, 65535);
}

// newton_schulz on at most ns_batch_limit matrices.
inline void newton_schulz_chunk(Context& ctx, const CudaOptions& options, MatrixStack<float> x, const NsOptions& o) {
  if (x.size() == 0) return;
  const BlasMathGuard math = ctx.bind();
  const bool wide = x.rows <= x.cols;
  const std::int64_t n = std::min(x.rows, x.cols), nn = n * n, xs = x.matrix_size(), batch = x.batch;
  const int tiles = o.symmetric_products ? symmetric_tiles(options, n) : 1;
  const int parts = kernels::norm_parts(xs);
  Carver measure;
  (void)measure.take<double>(batch * parts);
  (void)measure.take<float>(batch);
  for (int i = 0; i < 2; ++i) (void)measure.take<__nv_bfloat16>(x.size());
  for (int i = 0; i < 2; ++i) (void)measure.take<__nv_bfloat16>(batch * nn);
  (void)measure.take<void*>(tile_pointer_count(options, batch, tiles));
  Carver carve(static_cast<char*>(ctx.scratch_of(measure.bytes())));
  double* partial = carve.take<double>(batch * parts);
  float* inverse = carve.take<float>(batch);
  __nv_bfloat16* cur = carve.take<__nv_bfloat16>(x.size());
  __nv_bfloat16* nxt = carve.take<__nv_bfloat16>(x.size());
  __nv_bfloat16* gram16 = carve.take<__nv_bfloat16>(batch * nn);
  __nv_bfloat16* poly16 = carve.take<__nv_bfloat16>(batch * nn);
  void** pointers = carve.take<void*>(tile_pointer_count(options, batch, tiles));

  inverse_norms(ctx, x.as_const(), static_cast<float>(o.eps / o.schedule.norm_scale), o.eps_mode, partial, inverse);
  scale_matrices(ctx, x.data, batch, xs, inverse, cur);
  const GramSide side = wide ? GramSide::rows : GramSide::cols;
  for (int k = 0; k < o.steps; ++k) {
    const NsCoefficients t = detail::iteration_triple(o, k);
    symmetric_product(ctx, options, cur, batch, x.rows, x.cols, side, 1.0f, 0.0f, gram16, tiles, pointers);
    // B·X with B = b·A + c·A²; for a cubic step (c = 0) that is b·(A·X), with no B.
    const __nv_bfloat16* poly = gram16;
    auto alpha = static_cast<float>(t.b);
    if (t.c != 0.0) {
      copy(ctx, poly16, gram16, batch * nn);
      symmetric_product(ctx, options, gram16, batch, n, n, GramSide::rows, static_cast<float>(t.c),
                        static_cast<float>(t.b), poly16, tiles, pointers);
      poly = poly16;
      alpha = 1.0f;
    }
    copy(ctx, nxt, cur, x.size());
    const auto a = static_cast<float>(t.a);
    // Column-major, X is Y = Xᵀ (cols×rows, ld cols). Wide: (B·X)ᵀ = Y·B (B symmetric);
    // tall: (X·B)ᵀ = B·Y. Either way the n×n factor has ld n and the result ld cols.
    const __nv_bfloat16* left = wide ? cur : poly;
    const __nv_bfloat16* right = wide ? poly : cur;
    cuda_check(cublasGemmStridedBatchedEx(
        ctx.blas, CUBLAS_OP_N, CUBLAS_OP_N, blas_int(x.cols, "columns"), blas_int(x.rows, "rows"),
        blas_int(n, "small side"), &alpha, left, CUDA_R_16BF, blas_int(wide ? x.cols : n, "lda"), wide ? xs : nn, right,
        CUDA_R_16BF, blas_int(wide ? n : x.cols, "ldb"), wide ? nn : xs, &a, nxt, CUDA_R_16BF, blas_int(x.cols, "ldc"),
        xs, blas_int(batch, "batch"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    std::swap(cur, nxt);
  }
  const std::int64_t total = x.size();
  kernels::convert_kernel<__nv_bfloat16, float>
      <<<kernels::grid_for(total), kernels::kThreads, 0, ctx.stream>>>(total, cur, x.data);
  cuda_check(cudaGetLastError());
}

}  // namespace muon::detail
