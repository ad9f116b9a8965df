// muon/cpu/blas.hpp: the single-precision matrix products of the CPU code, on OpenBLAS or Eigen.
//
// The one place that includes <cblas.h>. Row-major fp32 GEMM, SYRK (lower triangle) and GEMV go to
// OpenBLAS when MUON_HAS_OPENBLAS is defined (CMake does so when it finds OpenBLAS): its kernels are
// chosen at run time for the CPU, so they are fast whatever -march the user compiles with. Without
// it, Eigen's products serve. Dimensions are std::int64_t; each one passes through `blas_int`, which
// throws muon::InvalidArgument naming it when it does not fit the BLAS integer, instead of wrapping.
//
// One definition: a header-only library compiles its inline functions into every translation unit,
// and the linker keeps one copy per mangled name. If a body depended on MUON_HAS_OPENBLAS or
// MUON_HAS_ONEDNN under the same name, two units built with different flags would share one copy
// silently (and EigenBackend's members would disagree on its layout). So configuration-dependent
// code lives in the inline namespace MUON_CPU_CONFIG, whose name spells the configuration
// (cpu_openblas_onednn, cpu_openblas, cpu_onednn or cpu_eigen): `muon::cpu::gemm` and
// `muon::EigenBackend` keep their names in source, while each configuration gets its own symbols
// and types, and passing an object across configurations is a compile or link error. A caller's
// own inline functions that call these keep their names: mixed, its units share one copy of each,
// which still computes correctly, on one engine.
//
//   muon::cpu::gemm(muon::Transpose::no, muon::Transpose::yes, m, n, k, 1.0f, x, k, w, k, 0.0f, y, n);
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <concepts>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

#include "muon/backend.hpp"
#include "muon/error.hpp"

#ifdef MUON_HAS_OPENBLAS
#include <cblas.h>
#endif

#if defined(MUON_HAS_OPENBLAS) && defined(MUON_HAS_ONEDNN)
#define MUON_CPU_CONFIG cpu_openblas_onednn
#elif defined(MUON_HAS_OPENBLAS)
#define MUON_CPU_CONFIG cpu_openblas
#elif defined(MUON_HAS_ONEDNN)
#define MUON_CPU_CONFIG cpu_onednn
#else
#define MUON_CPU_CONFIG cpu_eigen
#endif

namespace muon::cpu {

// `value` as the integer type Int of a BLAS interface; throws InvalidArgument naming `what` (for
// example "gemm k") when it is negative or too large, where a cast would pass a wrapped value on.
template <std::integral Int>
[[nodiscard]] Int blas_int(std::int64_t value, std::string_view what) {
  if (value < 0 || !std::in_range<Int>(value))
    throw InvalidArgument("muon::cpu BLAS: " + std::string(what) + " = " + std::to_string(value) +
                          " is outside the BLAS integer range [0, " +
                          std::to_string(std::numeric_limits<Int>::max()) +
                          "]; split the product into smaller ones or use an OpenBLAS built with 64-bit integers");
  return static_cast<Int>(value);
}

namespace detail {
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Map = Eigen::Map<RowMajor, 0, Eigen::OuterStride<>>;
using ConstMap = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;

#ifdef MUON_HAS_OPENBLAS
inline CBLAS_TRANSPOSE op(Transpose t) { return t == Transpose::yes ? CblasTrans : CblasNoTrans; }
#endif
// BLAS rejects a leading dimension below 1 even when the matrix is empty. A template on the BLAS
// integer, so that each configuration's BlasInt gives its own symbol.
template <std::integral Int>
[[nodiscard]] Int ld(std::int64_t v, std::string_view what) {
  return blas_int<Int>(std::max<std::int64_t>(v, 1), what);
}
}  // namespace detail

inline namespace MUON_CPU_CONFIG {

// "OpenBLAS" or "Eigen": what runs this translation unit's products.
[[nodiscard]] inline std::string_view blas_engine() {
#ifdef MUON_HAS_OPENBLAS
  return "OpenBLAS";
#else
  return "Eigen";
#endif
}

// The integer type the engine takes dimensions in: OpenBLAS's blasint (32-bit unless OpenBLAS was
// built with INTERFACE64), or Eigen's 64-bit index.
#ifdef MUON_HAS_OPENBLAS
using BlasInt = blasint;
#else
using BlasInt = Eigen::Index;
#endif


// C = α·op(A)·op(B) + β·C, row-major: op(A) m×k, op(B) k×n, C m×n, with row strides lda, ldb, ldc
// (A is k×m when transposed). β = 0: C is not read.
inline void gemm(Transpose ta, Transpose tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                 const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
                 std::int64_t ldc) {
  if (m == 0 || n == 0) return;
#ifdef MUON_HAS_OPENBLAS
  cblas_sgemm(CblasRowMajor, detail::op(ta), detail::op(tb), blas_int<BlasInt>(m, "gemm m"),
              blas_int<BlasInt>(n, "gemm n"), blas_int<BlasInt>(k, "gemm k"), alpha, a,
              detail::ld<BlasInt>(lda, "gemm lda"), b, detail::ld<BlasInt>(ldb, "gemm ldb"), beta, c,
              detail::ld<BlasInt>(ldc, "gemm ldc"));
#else
  using detail::ConstMap;
  const bool at = ta == Transpose::yes, bt = tb == Transpose::yes;
  const ConstMap A(a, at ? k : m, at ? m : k, Eigen::OuterStride<>(lda));
  const ConstMap B(b, bt ? n : k, bt ? k : n, Eigen::OuterStride<>(ldb));
  detail::Map C(c, m, n, Eigen::OuterStride<>(ldc));
  if (beta == 0.0f)
    C.setZero();
  else if (beta != 1.0f)
    C *= beta;
  if (!at && !bt) C.noalias() += alpha * A * B;
  if (!at && bt) C.noalias() += alpha * A * B.transpose();
  if (at && !bt) C.noalias() += alpha * A.transpose() * B;
  if (at && bt) C.noalias() += alpha * A.transpose() * B.transpose();
#endif
}

// The lower triangle of C = α·op(A)·op(A)ᵀ + β·C, row-major: op(A) n×k (A is k×n when
// transposed), C n×n; the strict upper triangle is neither read nor written. β = 0: C is not read.
inline void syrk_lower(Transpose ta, std::int64_t n, std::int64_t k, float alpha, const float* a, std::int64_t lda,
                       float beta, float* c, std::int64_t ldc) {
  if (n == 0) return;
#ifdef MUON_HAS_OPENBLAS
  cblas_ssyrk(CblasRowMajor, CblasLower, detail::op(ta), blas_int<BlasInt>(n, "syrk n"),
              blas_int<BlasInt>(k, "syrk k"), alpha, a, detail::ld<BlasInt>(lda, "syrk lda"), beta, c,
              detail::ld<BlasInt>(ldc, "syrk ldc"));
#else
  const bool at = ta == Transpose::yes;
  const detail::ConstMap A(a, at ? k : n, at ? n : k, Eigen::OuterStride<>(lda));
  detail::Map C(c, n, n, Eigen::OuterStride<>(ldc));
  if (beta == 0.0f)
    C.triangularView<Eigen::Lower>().setZero();
  else if (beta != 1.0f)
    C.triangularView<Eigen::Lower>() *= beta;
  if (at)
    C.selfadjointView<Eigen::Lower>().rankUpdate(A.transpose(), alpha);
  else
    C.selfadjointView<Eigen::Lower>().rankUpdate(A, alpha);
#endif
}

// y = α·A·x + β·y, row-major A m×n with row stride lda, x and y contiguous. β = 0: y is not read.
inline void gemv(std::int64_t m, std::int64_t n, float alpha, const float* a, std::int64_t lda, const float* x,
                 float beta, float* y) {
  if (m == 0) return;
#ifdef MUON_HAS_OPENBLAS
  // n = 0 goes to Eigen: BLAS returns before scaling y then.
  if (n > 0)
    return cblas_sgemv(CblasRowMajor, CblasNoTrans, blas_int<BlasInt>(m, "gemv m"), blas_int<BlasInt>(n, "gemv n"),
                       alpha, a, detail::ld<BlasInt>(lda, "gemv lda"), x, 1, beta, y, 1);
#endif
  Eigen::Map<Eigen::VectorXf> Y(y, m);
  if (beta == 0.0f)
    Y.setZero();
  else if (beta != 1.0f)
    Y *= beta;
  const detail::ConstMap A(a, m, n, Eigen::OuterStride<>(lda));
  Y.noalias() += alpha * A * Eigen::Map<const Eigen::VectorXf>(x, n);
}

}  // namespace MUON_CPU_CONFIG
}  // namespace muon::cpu
