// muon/cpu/blas.hpp: the products against a double-precision reference, in two translation units
// of one binary built with different configurations (this one as CMake found it, and
// cpu_blas_eigen_only.cpp without OpenBLAS and oneDNN), each of which must keep its own engine;
// and the checked conversion of dimensions to the BLAS integer.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <muon/backends/eigen.hpp>
#include <muon/cpu/blas.hpp>
#include <muon/error.hpp>
#include <vector>

#include "cpu_blas_probe.hpp"

namespace {

using muon::Transpose;
using muon::test::BlasProbe;

TEST_CASE("each translation unit keeps its own configuration's products, and both are accurate") {
  const BlasProbe here = muon::test::probe_products();
  const BlasProbe eigen_only = muon::test::probe_eigen_only();
  INFO("this unit: ", here.engine, ", ", here.backend_type, "; Eigen-only unit: ", eigen_only.engine, ", ",
       eigen_only.backend_type);
  // CMake tells what it found, so that the test cannot pass vacuously where OpenBLAS or oneDNN is.
  CHECK(here.engine == MUON_TEST_BLAS_ENGINE);
  CHECK(eigen_only.engine == "Eigen");
  CHECK(eigen_only.backend_type.find("cpu_eigen") != std::string::npos);
  if (MUON_TEST_CONFIGS_DIFFER) {
    // One name for two configurations would let the linker keep one body for both units.
    CHECK(here.backend_type != eigen_only.backend_type);
    CHECK(here.gemm_address != eigen_only.gemm_address);
  } else {
    CHECK(here.backend_type == eigen_only.backend_type);
  }
  // The bound of cpu_blas_probe.hpp: (k + 3)·2⁻²⁴·(|α|·Σ|a||b| + |β|·|c|) per element.
  CHECK(here.worst_error_ratio <= 1.0);
  CHECK(eigen_only.worst_error_ratio <= 1.0);
}

TEST_CASE("blas_int passes every value that fits and names the dimension that does not") {
  using muon::cpu::blas_int;
  CHECK(blas_int<std::int32_t>(0, "gemm m") == 0);
  CHECK(blas_int<std::int32_t>(std::numeric_limits<std::int32_t>::max(), "gemm m") ==
        std::numeric_limits<std::int32_t>::max());
  CHECK(blas_int<std::int64_t>(std::int64_t{1} << 40, "gemm m") == std::int64_t{1} << 40);
  // 2³¹ would wrap to a negative int, 2³² + 5 to 5: a product of the wrong shape.
  CHECK_THROWS_WITH_AS((void)blas_int<std::int32_t>(std::int64_t{1} << 31, "gemm k"),
                       doctest::Contains("gemm k = 2147483648 is outside the BLAS integer range [0, 2147483647]"),
                       muon::InvalidArgument);
  CHECK_THROWS_WITH_AS((void)blas_int<std::int32_t>((std::int64_t{1} << 32) + 5, "syrk ldc"),
                       doctest::Contains("syrk ldc = 4294967301"), muon::InvalidArgument);
  CHECK_THROWS_WITH_AS((void)blas_int<std::int64_t>(-1, "gemv n"), doctest::Contains("gemv n = -1"),
                       muon::InvalidArgument);
}

TEST_CASE("a product whose dimension does not fit the engine's integer throws before it runs") {
  // Eigen's indices, and an INTERFACE64 OpenBLAS's, are 64-bit: nothing to check there.
  if constexpr (sizeof(muon::cpu::BlasInt) < sizeof(std::int64_t)) {
    // A too-large leading dimension of a 1×1 product: nothing is read or written when it throws.
    std::vector<float> a(1, 1.0f), b(1, 1.0f), c(1, 0.0f);
    const std::int64_t huge = std::int64_t{1} << 33;
    CHECK_THROWS_WITH_AS(muon::cpu::gemm(Transpose::no, Transpose::no, 1, 1, 1, 1.0f, a.data(), huge, b.data(), 1,
                                         0.0f, c.data(), 1),
                         doctest::Contains("gemm lda = 8589934592"), muon::InvalidArgument);
    CHECK_THROWS_WITH_AS(muon::cpu::syrk_lower(Transpose::no, 1, 1, 1.0f, a.data(), 1, 0.0f, c.data(), huge),
                         doctest::Contains("syrk ldc"), muon::InvalidArgument);
    CHECK_THROWS_WITH_AS(muon::cpu::gemv(1, 1, 1.0f, a.data(), huge, b.data(), 0.0f, c.data()),
                         doctest::Contains("gemv lda"), muon::InvalidArgument);
    CHECK(c[0] == 0.0f);
  }
}

}  // namespace
