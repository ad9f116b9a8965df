// tests/support.hpp: seeded random data and small linear-algebra checks shared by the tests.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <random>
#include <vector>

namespace muon::test {

using MatrixRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Normal(0, scale²) values from a fixed seed: every run sees the same data.
inline std::vector<float> random_normal(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> out(n);
  for (float& v : out) v = dist(gen);
  return out;
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
