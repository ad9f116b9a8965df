// tests/cpu_blas_probe.hpp: what one translation unit's CPU products are, for test_cpu_blas.cpp.
//
// test_cpu_blas.cpp and cpu_blas_eigen_only.cpp include this under different MUON_HAS_* macros and
// each returns a probe of its own unit. The probing code is in an unnamed namespace, so each unit
// keeps its own copy: as an inline function it would be merged by the linker, which is the hazard
// the test looks for.
//
// Tolerance: every result element is compared with a double-precision reference of the same float
// inputs. A k-term dot product in fp32 errs by at most γ_k·Σ|a||b| with γ_k ≈ k·u, u = 2⁻²⁴, in any
// summation order (Higham, Accuracy and Stability, §3.1); scaling by α, by β and the final sum add
// up to three more roundings, so the bound is (k + 3)·u·(|α|·Σ|a||b| + |β|·|c|). It holds for
// OpenBLAS's blocked kernels and Eigen's alike, and a wrong index or transpose misses it by far.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <muon/backends/eigen.hpp>
#include <muon/cpu/blas.hpp>
#include <random>
#include <string>
#include <typeinfo>
#include <vector>

namespace muon::test {

// One translation unit's configuration and how well its products did.
struct BlasProbe {
  std::string engine;                // muon::cpu::blas_engine() there
  std::string backend_type;          // typeid(muon::EigenBackend).name(): spells the inline namespace
  std::uintptr_t gemm_address = 0;   // &muon::cpu::gemm there; equal in two units if the linker merged them
  double worst_error_ratio = 0.0;    // the largest |result − reference| / bound over all products: ≤ 1 passes
};

BlasProbe probe_eigen_only();  // cpu_blas_eigen_only.cpp: built without OpenBLAS and oneDNN

namespace {

constexpr double kUnitRoundoff = 0x1p-24;
constexpr float kPadding = 7.0f;  // fills the gaps of strided outputs, which must stay untouched

// A row-major matrix with `ld` floats per row, ld ≥ cols; the gap holds kPadding.
struct Strided {
  std::int64_t rows, cols, ld;
  std::vector<float> data;
  Strided(std::int64_t r, std::int64_t c, std::int64_t pad, std::mt19937& gen)
      : rows(r), cols(c), ld(c + pad), data(static_cast<std::size_t>(r * (c + pad)), kPadding) {
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = 0; j < cols; ++j) at(i, j) = dist(gen);
  }
  float& at(std::int64_t i, std::int64_t j) { return data[static_cast<std::size_t>(i * ld + j)]; }
  [[nodiscard]] float at(std::int64_t i, std::int64_t j) const { return data[static_cast<std::size_t>(i * ld + j)]; }
  // Element (i, j) of op(this).
  [[nodiscard]] double op(Transpose t, std::int64_t i, std::int64_t j) const {
    return t == Transpose::yes ? at(j, i) : at(i, j);
  }
  [[nodiscard]] bool padding_intact() const {
    for (std::int64_t i = 0; i < rows; ++i)
      for (std::int64_t j = cols; j < ld; ++j)
        if (at(i, j) != kPadding) return false;
    return true;
  }
};

class ErrorRatio {
 public:
  // `exact` is α·Σa·b + β·c in double, `magnitude` is |α|·Σ|a||b| + |β|·|c|, over k terms.
  void add(float got, double exact, double magnitude, std::int64_t k) {
    const double bound = static_cast<double>(k + 3) * kUnitRoundoff * magnitude + std::numeric_limits<float>::min();
    const double ratio = std::abs(double{got} - exact) / bound;
    if (!(ratio <= worst_)) worst_ = ratio;  // NaN sticks
  }
  void fail() { worst_ = std::numeric_limits<double>::infinity(); }
  [[nodiscard]] double worst() const { return worst_; }

 private:
  double worst_ = 0.0;
};

// C = α·op(A)·op(B) + β·C through cpu::gemm on row-padded operands. β = 0: C starts as NaN.
void check_gemm(Transpose ta, Transpose tb, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, float beta,
                std::mt19937& gen, ErrorRatio& error) {
  const bool at = ta == Transpose::yes, bt = tb == Transpose::yes;
  const Strided a(at ? k : m, at ? m : k, 3, gen), b(bt ? n : k, bt ? k : n, 2, gen);
  Strided c(m, n, 1, gen);
  const Strided c0 = c;
  if (beta == 0.0f)
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) c.at(i, j) = std::numeric_limits<float>::quiet_NaN();
  cpu::gemm(ta, tb, m, n, k, alpha, a.data.data(), a.ld, b.data.data(), b.ld, beta, c.data.data(), c.ld);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      const double c_term = beta == 0.0f ? 0.0 : double{beta} * c0.at(i, j);
      double sum = 0.0, abs_sum = 0.0;
      for (std::int64_t l = 0; l < k; ++l) {
        sum += a.op(ta, i, l) * b.op(tb, l, j);
        abs_sum += std::abs(a.op(ta, i, l) * b.op(tb, l, j));
      }
      error.add(c.at(i, j), alpha * sum + c_term, std::abs(alpha) * abs_sum + std::abs(c_term), k);
    }
  if (!c.padding_intact()) error.fail();
}

// The lower triangle of C = α·op(A)·op(A)ᵀ + β·C through cpu::syrk_lower; the strict upper
// triangle, preset to kPadding, must stay as it is.
void check_syrk(Transpose ta, std::int64_t n, std::int64_t k, float alpha, float beta, std::mt19937& gen,
                ErrorRatio& error) {
  const Strided a(ta == Transpose::yes ? k : n, ta == Transpose::yes ? n : k, 2, gen);
  Strided c(n, n, 1, gen);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = i + 1; j < n; ++j) c.at(i, j) = kPadding;
  const Strided c0 = c;
  cpu::syrk_lower(ta, n, k, alpha, a.data.data(), a.ld, beta, c.data.data(), c.ld);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j <= i; ++j) {
      double sum = 0.0, abs_sum = 0.0;
      for (std::int64_t l = 0; l < k; ++l) {
        sum += a.op(ta, i, l) * a.op(ta, j, l);
        abs_sum += std::abs(a.op(ta, i, l) * a.op(ta, j, l));
      }
      const double c_term = double{beta} * c0.at(i, j);
      error.add(c.at(i, j), alpha * sum + c_term, std::abs(alpha) * abs_sum + std::abs(c_term), k);
    }
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = i + 1; j < n; ++j)
      if (c.at(i, j) != kPadding) error.fail();
  if (!c.padding_intact()) error.fail();
}

// y = α·A·x + β·y through cpu::gemv. β = 0: y starts as NaN.
void check_gemv(std::int64_t m, std::int64_t n, float alpha, float beta, std::mt19937& gen, ErrorRatio& error) {
  const Strided a(m, n, 5, gen), x(1, n, 0, gen), y0(1, m, 0, gen);
  std::vector<float> y(y0.data);
  if (beta == 0.0f) y.assign(y.size(), std::numeric_limits<float>::quiet_NaN());
  cpu::gemv(m, n, alpha, a.data.data(), a.ld, x.data.data(), beta, y.data());
  for (std::int64_t i = 0; i < m; ++i) {
    double sum = 0.0, abs_sum = 0.0;
    for (std::int64_t l = 0; l < n; ++l) {
      sum += double{a.at(i, l)} * x.at(0, l);
      abs_sum += std::abs(double{a.at(i, l)} * x.at(0, l));
    }
    const double c_term = beta == 0.0f ? 0.0 : double{beta} * y0.at(0, i);
    error.add(y[static_cast<std::size_t>(i)], alpha * sum + c_term, std::abs(alpha) * abs_sum + std::abs(c_term), n);
  }
}

// EigenBackend's gemm and gram (fp32) on a stack of two, against the same reference.
void check_backend(std::mt19937& gen, ErrorRatio& error) {
  EigenBackend cpu_backend({.ns_precision = NsPrecision::fp32});
  constexpr std::int64_t kBatch = 2, kRows = 24, kCols = 40;
  const Strided x(kBatch * kRows, kCols, 0, gen);
  const MatrixStack<const float> stack{x.data.data(), kBatch, kRows, kCols};
  for (const GramSide side : {GramSide::rows, GramSide::cols}) {
    const bool rows = side == GramSide::rows;
    const std::int64_t n = rows ? kRows : kCols, k = rows ? kCols : kRows;
    std::vector<float> c(static_cast<std::size_t>(kBatch * n * n), std::numeric_limits<float>::quiet_NaN());
    cpu_backend.gram(1.0f, stack, side, 0.0f, {c.data(), kBatch, n, n});
    // Gram of the rows: Σ_l x(i, l)·x(j, l); of the columns: Σ_l x(l, i)·x(l, j).
    for (std::int64_t b = 0; b < kBatch; ++b)
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < n; ++j) {
          double sum = 0.0, abs_sum = 0.0;
          for (std::int64_t l = 0; l < k; ++l) {
            const double p = rows ? double{x.at(b * kRows + i, l)} * x.at(b * kRows + j, l)
                                  : double{x.at(b * kRows + l, i)} * x.at(b * kRows + l, j);
            sum += p;
            abs_sum += std::abs(p);
          }
          error.add(c[static_cast<std::size_t>((b * n + i) * n + j)], sum, abs_sum, k);
        }
  }
  // X·Xᵀ as a gemm with B = A, transposed: the product Newton–Schulz forms.
  std::vector<float> c(static_cast<std::size_t>(kBatch * kRows * kRows), std::numeric_limits<float>::quiet_NaN());
  cpu_backend.gemm(0.5f, stack, Transpose::no, stack, Transpose::yes, 0.0f, {c.data(), kBatch, kRows, kRows});
  for (std::int64_t b = 0; b < kBatch; ++b)
    for (std::int64_t i = 0; i < kRows; ++i)
      for (std::int64_t j = 0; j < kRows; ++j) {
        double sum = 0.0, abs_sum = 0.0;
        for (std::int64_t l = 0; l < kCols; ++l) {
          const double p = double{x.at(b * kRows + i, l)} * x.at(b * kRows + j, l);
          sum += p;
          abs_sum += std::abs(p);
        }
        error.add(c[static_cast<std::size_t>((b * kRows + i) * kRows + j)], 0.5 * sum, 0.5 * abs_sum, kCols);
      }
}

BlasProbe probe_products() {
  BlasProbe probe{.engine = std::string(cpu::blas_engine()),
                  .backend_type = typeid(EigenBackend).name(),
                  .gemm_address = reinterpret_cast<std::uintptr_t>(&cpu::gemm)};
  std::mt19937 gen(20261201);
  ErrorRatio error;
  for (const Transpose ta : {Transpose::no, Transpose::yes}) {
    for (const Transpose tb : {Transpose::no, Transpose::yes}) {
      check_gemm(ta, tb, 5, 7, 33, 1.5f, 0.5f, gen, error);
      check_gemm(ta, tb, 64, 48, 96, -1.0f, 0.0f, gen, error);
      check_gemm(ta, tb, 3, 4, 0, 1.0f, 0.5f, gen, error);  // k = 0: C = β·C
    }
    check_syrk(ta, 17, 40, 1.0f, 0.0f, gen, error);
    check_syrk(ta, 33, 9, -0.5f, 2.0f, gen, error);
    check_syrk(ta, 6, 0, 1.0f, 0.5f, gen, error);
  }
  check_gemv(31, 200, 1.0f, 0.0f, gen, error);
  check_gemv(9, 17, 2.0f, -1.0f, gen, error);
  check_gemv(4, 0, 1.0f, 0.5f, gen, error);  // n = 0: y = β·y
  check_backend(gen, error);
  probe.worst_error_ratio = error.worst();
  return probe;
}

}  // namespace
}  // namespace muon::test
