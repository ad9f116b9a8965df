// tests/support.hpp: seeded random data and small linear-algebra checks shared by the tests.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <random>
#include <vector>

#ifdef MUON_HAS_ONEDNN
#include <muon/backends/eigen.hpp>
#endif

namespace muon::test {

using MatrixRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Normal(0, scale²) values from a fixed seed: every run sees the same data.
// Whether this CPU multiplies bf16 through oneDNN (it needs AVX-512 at least: on an AVX2-only
// CPU, or under ONEDNN_MAX_CPU_ISA=AVX2, the bf16 backend refuses to be made). The bf16 test
// cases say so and pass there, as the GPU tests skip without a GPU.
#ifdef MUON_HAS_ONEDNN
inline bool bf16_products_available() {
  try {
    (void)muon::EigenBackend({.ns_precision = muon::NsPrecision::bf16});
    return true;
  } catch (const muon::InvalidArgument&) {
    return false;
  }
}
#endif

inline std::vector<float> random_normal(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> out(n);
  for (float& v : out) v = dist(gen);
  return out;
}

// Uniform [lo, hi) values from a fixed seed.
inline std::vector<float> random_uniform(std::size_t n, unsigned seed, float lo = -2.0f, float hi = 2.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// Singular values of one row-major rows×cols matrix, computed in double.
inline Eigen::VectorXd singular_values(const float* data, std::int64_t rows, std::int64_t cols) {
  const Eigen::Map<const MatrixRM> m(data, rows, cols);
  return Eigen::JacobiSVD<Eigen::MatrixXd>(m.cast<double>()).singularValues();
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(double{a[i]} - double{b[i]}));
  return d;
}

}  // namespace muon::test
