// muon/backends/eigen.hpp: the CPU backend, on Eigen 3.4.
//
// Models muon::Backend over host memory. Matrix products use Eigen's GEMM; `gram` computes one
// triangle with Eigen's rank update (SYRK) and mirrors it. Elementwise operations are plain loops
// that the compiler vectorises, parallelised with OpenMP where it is enabled. Results do not
// depend on the thread count except through Eigen's GEMM blocking.
//
//   muon::EigenBackend cpu;
//   muon::Optimizer<muon::EigenBackend> opt(cpu, params, muon::Options{});
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <vector>

#include "muon/backend.hpp"

namespace muon {

class EigenBackend {
 public:
  // Host memory, zero-filled, aligned for Eigen's vectorised kernels.
  class Buffer {
   public:
    Buffer() = default;
    explicit Buffer(std::int64_t n) : data_(static_cast<std::size_t>(n), 0.0f) {}
    [[nodiscard]] std::span<float> span() { return data_; }
    [[nodiscard]] std::span<const float> span() const { return data_; }

   private:
    std::vector<float, Eigen::aligned_allocator<float>> data_;
  };

  [[nodiscard]] Buffer allocate(std::int64_t n) { return Buffer(n); }

  void gemm(float alpha, MatrixStack<const float> a, Transpose ta, MatrixStack<const float> b,
            Transpose tb, float beta, MatrixStack<float> c) {
    const std::int64_t m = ta == Transpose::yes ? a.cols : a.rows;
    const std::int64_t n = tb == Transpose::yes ? b.rows : b.cols;
    for (std::int64_t i = 0; i < c.batch; ++i) {
      const ConstMap A(a.matrix(i), a.rows, a.cols), B(b.matrix(i), b.rows, b.cols);
      Map C(c.matrix(i), m, n);
      scale_or_zero(C, beta);
      if (ta == Transpose::no && tb == Transpose::no) C.noalias() += alpha * A * B;
      if (ta == Transpose::no && tb == Transpose::yes) C.noalias() += alpha * A * B.transpose();
      if (ta == Transpose::yes && tb == Transpose::no) C.noalias() += alpha * A.transpose() * B;
      if (ta == Transpose::yes && tb == Transpose::yes)
        C.noalias() += alpha * A.transpose() * B.transpose();
    }
  }

  void gram(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c) {
    for (std::int64_t i = 0; i < c.batch; ++i) {
      const ConstMap X(x.matrix(i), x.rows, x.cols);
      Map C(c.matrix(i), c.rows, c.cols);
      if (beta == 0.0f)
        C.triangularView<Eigen::Lower>().setZero();
      else
        C.triangularView<Eigen::Lower>() *= beta;
      if (side == GramSide::rows)
        C.selfadjointView<Eigen::Lower>().rankUpdate(X, alpha);
      else
        C.selfadjointView<Eigen::Lower>().rankUpdate(X.transpose(), alpha);
      for (Eigen::Index r = 0; r < C.rows(); ++r)
        for (Eigen::Index col = r + 1; col < C.cols(); ++col) C(r, col) = C(col, r);
    }
  }

  void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y) {
    const auto n = static_cast<std::int64_t>(y.size());
    const float* xs = x.data();
    float* ys = y.data();
    if (beta == 0.0f) {
#pragma omp parallel for simd if (n > kParallelMin)
      for (std::int64_t i = 0; i < n; ++i) ys[i] = alpha * xs[i];
    } else {
#pragma omp parallel for simd if (n > kParallelMin)
      for (std::int64_t i = 0; i < n; ++i) ys[i] = alpha * xs[i] + beta * ys[i];
    }
  }

  void normalize(MatrixStack<float> x, float eps, NormEps mode) {
    for (std::int64_t i = 0; i < x.batch; ++i) {
      const std::span<float> m(x.matrix(i), static_cast<std::size_t>(x.matrix_size()));
      const double norm = std::sqrt(sum_squares(m));
      const double denom = mode == NormEps::add ? norm + eps : std::max(norm, double{eps});
      const auto inv = static_cast<float>(1.0 / denom);
      for (float& v : m) v *= inv;
    }
  }

  void momentum(std::span<float> m, std::span<const float> g, MomentumStep s, std::span<float> u) {
    const auto n = static_cast<std::int64_t>(m.size());
    float* ms = m.data();
    float* us = u.data();
    const float* gs = g.data();
    const float mu = s.mu, scale = s.grad_scale;
    const float gain = s.form == MomentumForm::sum ? 1.0f : 1.0f - mu;  // weight of G in the buffer
#pragma omp parallel for simd if (n > kParallelMin)
    for (std::int64_t i = 0; i < n; ++i) {
      const float gi = gs[i] * scale;
      const float mi = mu * ms[i] + gain * gi;
      ms[i] = mi;
      us[i] = s.nesterov ? gain * gi + mu * mi : mi;
    }
  }

  void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v,
             AdamWStep s) {
    const auto n = static_cast<std::int64_t>(w.size());
    float *ws = w.data(), *ms = m.data(), *vs = v.data();
    const float* gs = g.data();
    const auto t = static_cast<double>(s.step);
    // Same operation order as torch's single-tensor AdamW: decay, moments, then
    // W -= (lr / bc1) · m / (√v / √bc2 + ε).
    const auto bc1 = static_cast<float>(1.0 - std::pow(double{s.beta1}, t));
    const auto bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(double{s.beta2}, t)));
    const float step_size = s.lr / bc1;
    const float decay = 1.0f - s.lr * s.weight_decay;
    const float b1 = s.beta1, b2 = s.beta2, eps = s.eps, scale = s.grad_scale;
#pragma omp parallel for simd if (n > kParallelMin)
    for (std::int64_t i = 0; i < n; ++i) {
      const float gi = gs[i] * scale;
      const float wi = ws[i] * decay;
      const float mi = ms[i] + (gi - ms[i]) * (1.0f - b1);
      const float vi = vs[i] * b2 + (1.0f - b2) * gi * gi;
      ms[i] = mi;
      vs[i] = vi;
      ws[i] = wi - step_size * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
    }
  }

  [[nodiscard]] double sum_squares(std::span<const float> x) {
    double total = 0.0;
    for (const float v : x) total += double{v} * double{v};
    return total;
  }

  void to_host(std::span<const float> x, std::span<float> host) {
    std::copy(x.begin(), x.end(), host.begin());
  }
  void from_host(std::span<const float> host, std::span<float> y) {
    std::copy(host.begin(), host.end(), y.begin());
  }

 private:
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Map = Eigen::Map<RowMajor>;
  using ConstMap = Eigen::Map<const RowMajor>;
  static constexpr std::int64_t kParallelMin = 1 << 16;  // below this, threads cost more than they save

  static void scale_or_zero(Map& c, float beta) {
    if (beta == 0.0f)
      c.setZero();
    else if (beta != 1.0f)
      c *= beta;
  }
};

static_assert(Backend<EigenBackend>);

}  // namespace muon
