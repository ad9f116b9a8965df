// A backend of std::vector and plain loops, written from nothing but muon/backend.hpp: the proof
// that the seam is small and real (tests/test_toy_backend.cpp), and the base of the recording
// backend that proves a step replays (tests/test_step_replay.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <muon/backend.hpp>
#include <span>
#include <vector>

namespace muon::test {

struct ToyBackend {
  struct Buffer {
    std::vector<float> data;
    std::span<float> span() { return data; }
  };
  using HostBuffer = Buffer;
  Buffer allocate(std::int64_t n) { return {std::vector<float>(static_cast<std::size_t>(n), 0.0f)}; }
  HostBuffer allocate_host(std::int64_t n) { return allocate(n); }

  static float at(MatrixStack<const float> m, std::int64_t k, std::int64_t i, std::int64_t j, Transpose t) {
    return t == Transpose::yes ? m.matrix(k)[j * m.cols + i] : m.matrix(k)[i * m.cols + j];
  }
  void gemm(float alpha, MatrixStack<const float> a, Transpose ta, MatrixStack<const float> b, Transpose tb, float beta,
            MatrixStack<float> c) {
    const std::int64_t inner = ta == Transpose::yes ? a.rows : a.cols;
    for (std::int64_t k = 0; k < c.batch; ++k)
      for (std::int64_t i = 0; i < c.rows; ++i)
        for (std::int64_t j = 0; j < c.cols; ++j) {
          double s = 0.0;
          for (std::int64_t l = 0; l < inner; ++l) s += double{at(a, k, i, l, ta)} * at(b, k, l, j, tb);
          float& out = c.matrix(k)[i * c.cols + j];
          out = static_cast<float>(alpha * s + (beta == 0.0f ? 0.0 : beta * out));
        }
  }
  void gram(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c) {
    const auto t = side == GramSide::rows ? Transpose::yes : Transpose::no;
    gemm(alpha, x, side == GramSide::rows ? Transpose::no : Transpose::yes, x, t, beta, c);
  }
  void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y) {
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = alpha * x[i] + (beta == 0.0f ? 0.0f : beta * y[i]);
  }
  void normalize(MatrixStack<float> x, float eps, NormEps mode) {
    for (std::int64_t k = 0; k < x.batch; ++k) {
      double ss = 0.0;
      for (std::int64_t i = 0; i < x.matrix_size(); ++i) ss += double{x.matrix(k)[i]} * x.matrix(k)[i];
      const double n = std::sqrt(ss);
      const double d = mode == NormEps::add ? n + eps : std::max(n, double{eps});
      for (std::int64_t i = 0; i < x.matrix_size(); ++i) x.matrix(k)[i] = static_cast<float>(x.matrix(k)[i] / d);
    }
  }
  void normalize_rows(MatrixStack<float> x, std::span<float> v, RowNormStep s) {
    for (std::int64_t r = 0; r < x.batch * x.rows; ++r) {
      float* row = x.data + r * x.cols;
      double ss = 0.0;
      for (std::int64_t j = 0; j < x.cols; ++j) ss += double{row[j]} * row[j];
      float& vr = v[static_cast<std::size_t>(r)];
      vr = static_cast<float>(double{s.beta2} * vr + (1.0 - double{s.beta2}) * (ss / static_cast<double>(x.cols)));
      const auto f = static_cast<float>(1.0 / (std::sqrt(double{vr}) + s.eps));
      for (std::int64_t j = 0; j < x.cols; ++j) row[j] *= f;
    }
  }
  void momentum(std::span<float> m, std::span<const float> g, MomentumStep s, std::span<float> u) {
    const float gain = s.form == MomentumForm::sum ? 1.0f : 1.0f - s.mu;
    const float scale = s.values->grad_scale;
    for (std::size_t i = 0; i < m.size(); ++i) {
      m[i] = s.mu * m[i] + gain * g[i] * scale;
      u[i] = s.nesterov ? gain * g[i] * scale + s.mu * m[i] : m[i];
    }
  }
  // From the block's lr, step t, decay and clipping factor, with its own bias corrections.
  void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v, AdamWStep s) {
    const StepValues& t = *s.values;
    const double bc1 = 1.0 - std::pow(double{s.beta1}, double{t.step});
    const double bc2 = 1.0 - std::pow(double{s.beta2}, double{t.step});
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double gi = double{g[i]} * t.grad_scale;
      m[i] = static_cast<float>(s.beta1 * m[i] + (1.0 - s.beta1) * gi);
      v[i] = static_cast<float>(s.beta2 * v[i] + (1.0 - s.beta2) * gi * gi);
      w[i] = static_cast<float>(w[i] * double{t.decay} - t.lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + s.eps));
    }
  }
  void update(std::span<float> w, std::span<const float> o, UpdateStep s) {
    const double step = double{s.values->lr} * s.scale;
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(s.values->decay * w[i] - step * o[i]);
  }
  double sum_squares(std::span<const float> x) {
    double s = 0.0;
    for (float v : x) s += double{v} * v;
    return s;
  }
  void to_host(std::span<const float> x, std::span<float> host) { std::copy(x.begin(), x.end(), host.begin()); }
  void from_host(std::span<const float> host, std::span<float> y) { std::copy(host.begin(), host.end(), y.begin()); }
  void upload(std::span<const float> host, std::span<float> y) { from_host(host, y); }
};

static_assert(Backend<ToyBackend>);

}  // namespace muon::test
