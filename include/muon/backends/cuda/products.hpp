// muon/backends/cuda/products.hpp: the CUDA backend's matrix products on cuBLAS: gemm, gram, and
// symmetric_product, which computes a Gram matrix of a stack in one batched call (the tile pairs
// of its lower triangle, or the full product) for `gram` and the bf16 Newton–Schulz. Row-major
// matrices are handed to column-major cuBLAS as their transposes (see gemm). Every public entry
// binds the handle and pins its math mode (detail::BlasMathGuard). Internal (namespace detail):
// CudaBackend's gemm and gram forward here.
//
//   detail::gemm(ctx, options, 1.0f, a, Transpose::no, b, Transpose::yes, 0.0f, c);  // C = A·Bᵀ
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/symmetric.cuh"
#include "muon/backend.hpp"
#include "muon/backends/cuda/context.hpp"
#include "muon/backends/cuda/elementwise.hpp"
#include "muon/backends/cuda/options.hpp"
#include "muon/cuda_check.hpp"

namespace muon::detail {

// A row-major operand read column-major is its transpose; op() is the flag that undoes it.
inline cublasOperation_t op(Transpose t) { return t == Transpose::yes ? CUBLAS_OP_T : CUBLAS_OP_N; }
// The number of tiles per side for a Gram matrix of size n: 4 or 2 when n splits into tiles that
// are multiples of 64 (aligned operands for the tensor cores) and at least symmetric_tile_min;
// 1 (one full GEMM) otherwise.
[[nodiscard]] inline int symmetric_tiles(const CudaOptions& options, std::int64_t n) {
  for (const int tiles : {4, 2})
    if (n % (64 * tiles) == 0 && n / tiles >= options.symmetric_tile_min) return tiles;
  return 1;
}

// Pointer-array entries symmetric_product needs (A, B and C arrays) for `tiles` per side.
[[nodiscard]] inline std::int64_t tile_pointer_count(const CudaOptions& options, std::int64_t batch, int tiles) {
  if (tiles == 1 || options.tile_gemm != SymmetricTileGemm::pointer_array) return 0;
  return 3 * batch * tiles * (tiles + 1) / 2;
}

template <class T>
void mirror_lower(Context& ctx, T* c, std::int64_t n, std::int64_t batch) {
  const auto tiles = static_cast<unsigned>((n + kernels::kMirrorTile - 1) / kernels::kMirrorTile);
  kernels::mirror_lower_kernel<T>
      <<<dim3(tiles, tiles, grid_y(batch)), dim3(kernels::kMirrorTile, 8), 0, ctx.stream>>>(c, n);
  cuda_check(cudaGetLastError());
}

// C = α·X·Xᵀ + β·C (side rows) or α·Xᵀ·X + β·C (side cols) per matrix of a bf16 or fp32 stack
// of rows×cols matrices, C (fp32 or bf16) symmetric n×n, fp32 accumulation. Row-major X is
// column-major Xᵀ (ld = cols), so X·Xᵀ is op T·N on it and Xᵀ·X is op N·T. With tiles > 1 only
// the tile pairs (P ≤ Q) of the column-major result are multiplied, the row-major lower
// triangle, then mirrored (`pointers`: tile_pointer_count entries); with β ≠ 0 that needs C
// symmetric, as the concept says. With one tile, a full GEMM: symmetric already. The tile pairs
// go to cuBLAS as options.tile_gemm says (pointer_array: `pointers` is used; strided_per_pair:
// it may be null).
template <class T, class C>
void symmetric_product(Context& ctx, const CudaOptions& options, const T* x, std::int64_t batch, std::int64_t rows,
                       std::int64_t cols, GramSide side, float alpha, float beta, C* c, int tiles, void** pointers) {
  const bool by_rows = side == GramSide::rows;
  const std::int64_t n = by_rows ? rows : cols, inner = by_rows ? cols : rows;
  const cublasOperation_t opa = by_rows ? CUBLAS_OP_T : CUBLAS_OP_N, opb = by_rows ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cudaDataType_t c_type = std::is_same_v<C, float> ? CUDA_R_32F : CUDA_R_16BF;
  const cudaDataType_t x_type = std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
  if (tiles == 1) {
    cuda_check(cublasGemmStridedBatchedEx(
        ctx.blas, opa, opb, blas_int(n, "Gram size"), blas_int(n, "Gram size"), blas_int(inner, "inner size"), &alpha,
        x, x_type, blas_int(cols, "ldx"), rows * cols, x, x_type, blas_int(cols, "ldx"), rows * cols, &beta, c, c_type,
        blas_int(n, "ldc"), n * n, blas_int(batch, "batch"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  const std::int64_t t = n / tiles, pairs = std::int64_t{tiles} * (tiles + 1) / 2, entries = batch * pairs;
  // Consecutive tiles of the operand: t columns of the column-major Xᵀ apart (t rows of X) for
  // X·Xᵀ, t rows of it (t columns of X) for Xᵀ·X.
  const std::int64_t tile_step = by_rows ? t * cols : t;
  if (options.tile_gemm == SymmetricTileGemm::strided_per_pair) {
    // Pair (P, Q), P ≤ Q: the same operands and result tile as the pointer arrays' entries.
    for (int q = 0; q < tiles; ++q)
      for (int p = 0; p <= q; ++p)
        cuda_check(cublasGemmStridedBatchedEx(
            ctx.blas, opa, opb, blas_int(t, "tile"), blas_int(t, "tile"), blas_int(inner, "inner size"), &alpha,
            x + p * tile_step, x_type, blas_int(cols, "ldx"), rows * cols, x + q * tile_step, x_type,
            blas_int(cols, "ldx"), rows * cols, &beta, c + p * t + q * t * n, c_type, blas_int(n, "ldc"), n * n,
            blas_int(batch, "batch"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    mirror_lower(ctx, c, n, batch);
    return;
  }
  const auto a_ptrs = const_cast<const void**>(pointers);
  const auto b_ptrs = const_cast<const void**>(pointers + entries);
  void** c_ptrs = pointers + 2 * entries;
  kernels::tile_pair_pointers_kernel<T, C>
      <<<static_cast<unsigned>((entries + kernels::kThreads - 1) / kernels::kThreads), kernels::kThreads, 0,
         ctx.stream>>>(x, rows * cols, tile_step, c, n * n, n, t, static_cast<int>(pairs), entries, a_ptrs, b_ptrs,
                       c_ptrs);
  cuda_check(cudaGetLastError());
  cuda_check(cublasGemmBatchedEx(ctx.blas, opa, opb, blas_int(t, "tile"), blas_int(t, "tile"),
                                 blas_int(inner, "inner size"), &alpha, a_ptrs, x_type, blas_int(cols, "ldx"), b_ptrs,
                                 x_type, blas_int(cols, "ldx"), &beta, c_ptrs, c_type, blas_int(n, "ldc"),
                                 blas_int(entries, "tile pairs"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  mirror_lower(ctx, c, n, batch);
}

// C = α·op(A)·op(B) + β·C per matrix. Row-major C = op(A)·op(B) is column-major
// Cᵀ = op(B)ᵀ·op(A)ᵀ, and a row-major matrix read column-major is its transpose: so cuBLAS gets
// B first, each with its own transpose flag, and the leading dimensions are the row lengths.
inline void gemm(Context& ctx, const CudaOptions& options, float alpha, MatrixStack<const float> a, Transpose ta,
                 MatrixStack<const float> b, Transpose tb, float beta, MatrixStack<float> c) {
  if (c.size() == 0) return;
  const BlasMathGuard math = ctx.bind();
  const std::int64_t k = ta == Transpose::yes ? a.rows : a.cols;
  const bool bf16 = options.ns_precision != NsPrecision::fp32;
  const void* pa = a.data;
  const void* pb = b.data;
  if (bf16) {
    const bool same = a.data == b.data && a.size() == b.size();
    Carver measure;
    (void)measure.take<__nv_bfloat16>(a.size());
    if (!same) (void)measure.take<__nv_bfloat16>(b.size());
    Carver carve(static_cast<char*>(ctx.scratch_of(measure.bytes())));
    __nv_bfloat16* a16 = carve.take<__nv_bfloat16>(a.size());
    __nv_bfloat16* b16 = same ? a16 : carve.take<__nv_bfloat16>(b.size());
    to_bf16(ctx, a.span(), a16);
    if (!same) to_bf16(ctx, b.span(), b16);
    pa = a16;
    pb = b16;
  }
  const cudaDataType_t operand = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  cuda_check(cublasGemmStridedBatchedEx(ctx.blas, op(tb), op(ta), blas_int(c.cols, "columns"), blas_int(c.rows, "rows"),
                                        blas_int(k, "inner size"), &alpha, pb, operand, blas_int(b.cols, "ldb"),
                                        b.matrix_size(), pa, operand, blas_int(a.cols, "lda"), a.matrix_size(), &beta,
                                        c.data, CUDA_R_32F, blas_int(c.cols, "ldc"), c.matrix_size(),
                                        blas_int(c.batch, "batch"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// C = α·X·Xᵀ + β·C (side rows) or α·Xᵀ·X + β·C (side cols), C symmetric. cuBLAS has SYRK for
// fp32 only, and no batched SYRK:
//   fp32, one matrix: cublasSsyrk on the column-major Xᵀ (ld = cols; trans T gives X·Xᵀ, N gives
//     Xᵀ·X), n²·k flops; it fills its upper triangle, the row-major lower one, then mirrored.
//   fp32 stacks, and bf16: symmetric_product, one batched call for the whole stack: the tile
//     pairs (T(T+1)/2 of T² tiles: 62.5% of the full product's 2n²k flops at T = 4, 75% at 2)
//     when the tiles are large enough, else one strided-batched GEMM of the full product (2n²k
//     flops, twice SYRK's, in one launch where SYRK took one per matrix: for the small Gram
//     matrices of a stack, launches cost more than flops). Which wins for fp32 stacks of large
//     matrices against a SYRK loop is to be measured on the first GPU run (BM_cuda_gram).
// With β ≠ 0 the mirrored paths need C symmetric, as the concept says.
inline void gram(Context& ctx, const CudaOptions& options, float alpha, MatrixStack<const float> x, GramSide side,
                 float beta, MatrixStack<float> c) {
  if (c.size() == 0) return;
  const BlasMathGuard math = ctx.bind();
  const bool rows = side == GramSide::rows;
  const std::int64_t n = rows ? x.rows : x.cols, inner = rows ? x.cols : x.rows;
  const bool fp32 = options.ns_precision == NsPrecision::fp32;
  if (fp32 && x.batch == 1) {
    cuda_check(cublasSsyrk(ctx.blas, CUBLAS_FILL_MODE_UPPER, rows ? CUBLAS_OP_T : CUBLAS_OP_N, blas_int(n, "Gram size"),
                           blas_int(inner, "inner size"), &alpha, x.data, blas_int(x.cols, "ldx"), &beta, c.data,
                           blas_int(n, "ldc")));
    mirror_lower(ctx, c.data, n, 1);
    return;
  }
  const int tiles = symmetric_tiles(options, n);
  Carver measure;
  if (!fp32) (void)measure.take<__nv_bfloat16>(x.size());
  (void)measure.take<void*>(tile_pointer_count(options, x.batch, tiles));
  Carver carve(static_cast<char*>(ctx.scratch_of(measure.bytes())));
  __nv_bfloat16* x16 = fp32 ? nullptr : carve.take<__nv_bfloat16>(x.size());
  void** pointers = carve.take<void*>(tile_pointer_count(options, x.batch, tiles));
  if (fp32) {
    symmetric_product(ctx, options, x.data, x.batch, x.rows, x.cols, side, alpha, beta, c.data, tiles, pointers);
    return;
  }
  to_bf16(ctx, x.span(), x16);
  symmetric_product(ctx, options, x16, x.batch, x.rows, x.cols, side, alpha, beta, c.data, tiles, pointers);
}

}  // namespace muon::detail
