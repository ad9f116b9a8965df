// muon/backends/eigen.hpp: the CPU backend, on Eigen 3.4.
//
// Models muon::Backend over host memory. Matrix products go to OpenBLAS's cblas_sgemm and
// cblas_ssyrk when MUON_HAS_OPENBLAS is defined (CMake does so when it finds OpenBLAS): their
// kernels are chosen at run time for the CPU, so they are fast whatever -march the user compiles
// with, and SSYRK computes X·Xᵀ in about 0.64× a GEMM's time (docs/performance.md). Without
// OpenBLAS, Eigen's own GEMM and rank update serve. `gram` fills one triangle and mirrors it.
// Elementwise operations are plain loops that the compiler vectorises, parallelised with OpenMP
// where it is enabled.
//
//   muon::Optimizer<muon::EigenBackend> opt(params, muon::Options{.lr = 4.2e-4});
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <span>
#include <vector>

#include "muon/backend.hpp"
#include "muon/orthogonalize.hpp"

#ifdef MUON_HAS_OPENBLAS
#include <cblas.h>
#endif

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
#ifdef MUON_HAS_OPENBLAS
      const std::int64_t k = ta == Transpose::yes ? a.rows : a.cols;
      cblas_sgemm(CblasRowMajor, blas_op(ta), blas_op(tb), blas_int(m), blas_int(n), blas_int(k), alpha,
                  a.matrix(i), blas_int(a.cols), b.matrix(i), blas_int(b.cols), beta, c.matrix(i), blas_int(n));
#else
      const ConstMap A(a.matrix(i), a.rows, a.cols), B(b.matrix(i), b.rows, b.cols);
      Map C(c.matrix(i), m, n);
      if (beta == 0.0f)
        C.setZero();
      else if (beta != 1.0f)
        C *= beta;
      if (ta == Transpose::no && tb == Transpose::no) C.noalias() += alpha * A * B;
      if (ta == Transpose::no && tb == Transpose::yes) C.noalias() += alpha * A * B.transpose();
      if (ta == Transpose::yes && tb == Transpose::no) C.noalias() += alpha * A.transpose() * B;
      if (ta == Transpose::yes && tb == Transpose::yes) C.noalias() += alpha * A.transpose() * B.transpose();
#endif
    }
  }

  void gram(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c) {
    for (std::int64_t i = 0; i < c.batch; ++i) {
#ifdef MUON_HAS_OPENBLAS
      const bool rows = side == GramSide::rows;
      cblas_ssyrk(CblasRowMajor, CblasLower, rows ? CblasNoTrans : CblasTrans, blas_int(c.rows),
                  blas_int(rows ? x.cols : x.rows), alpha, x.matrix(i), blas_int(x.cols), beta, c.matrix(i),
                  blas_int(c.cols));
#else
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
#endif
      mirror_lower(c.matrix(i), c.rows);
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
    const auto t = static_cast<double>(s.step);
    // torch's single-tensor AdamW, in its order: decay, moments, then
    // W -= (lr / bc1) · m / (√v / √bc2 + ε).
    const auto bc1 = static_cast<float>(1.0 - std::pow(double{s.beta1}, t));
    const auto bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(double{s.beta2}, t)));
    const float step_size = s.lr / bc1;
    const float decay = 1.0f - s.lr * s.weight_decay;
    // Eigen's array expressions, in cache-sized chunks: its packet sqrt vectorises whatever the
    // compiler flags, where std::sqrt in a loop needs -fno-math-errno.
#pragma omp parallel for if (n > kParallelMin)
    for (std::int64_t begin = 0; begin < n; begin += kChunk) {
      const std::int64_t len = std::min(kChunk, n - begin);
      Eigen::Map<Eigen::ArrayXf> W(w.data() + begin, len), M(m.data() + begin, len), V(v.data() + begin, len);
      const auto G = Eigen::Map<const Eigen::ArrayXf>(g.data() + begin, len) * s.grad_scale;
      M += (G - M) * (1.0f - s.beta1);
      V = V * s.beta2 + (1.0f - s.beta2) * G * G;
      W = W * decay - step_size * (M / (V.sqrt() / bc2_sqrt + s.eps));
    }
  }

  // Newton–Schulz takes a stack in chunks of about 16 MiB of matrices, so that one matrix's
  // iterations run in cache rather than streaming the whole stack through every operation.
  [[nodiscard]] std::int64_t ns_batch_limit(std::int64_t rows, std::int64_t cols) const {
    return std::max<std::int64_t>(1, (std::int64_t{1} << 22) / (rows * cols));
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
  static constexpr std::int64_t kChunk = 1 << 12;        // elements per chunk: four streams stay in L1/L2


  // Copies the lower triangle of a row-major n×n matrix onto the upper one, in tiles so that the
  // transposed reads stay in cache.
  static void mirror_lower(float* c, std::int64_t n) {
    constexpr std::int64_t kTile = 64;
#pragma omp parallel for schedule(dynamic) if (n >= 512)
    for (std::int64_t ib = 0; ib < n; ib += kTile)
      for (std::int64_t jb = 0; jb <= ib; jb += kTile)
        for (std::int64_t i = ib; i < std::min(ib + kTile, n); ++i)
          for (std::int64_t j = jb; j < std::min(jb + kTile, i); ++j) c[j * n + i] = c[i * n + j];
  }
#ifdef MUON_HAS_OPENBLAS
  static CBLAS_TRANSPOSE blas_op(Transpose t) { return t == Transpose::yes ? CblasTrans : CblasNoTrans; }
  static blasint blas_int(std::int64_t v) { return static_cast<blasint>(v); }
#endif
};

static_assert(Backend<EigenBackend> && LimitsNsBatch<EigenBackend>);

}  // namespace muon
