// The proof that the seam is small and real: a backend of std::vector and plain loops, written
// here from nothing but muon/backend.hpp, runs the same rules as the Eigen backend. Its results
// also serve as the reference in a conformance test of every Eigen backend operation.
#include <doctest/doctest.h>

#include <cmath>
#include <muon/muon.hpp>
#include <vector>

#ifdef MUON_HAS_EIGEN
#include <muon/backends/eigen.hpp>
#endif

namespace {

struct ToyBackend {
  struct Buffer {
    std::vector<float> data;
    std::span<float> span() { return data; }
  };
  Buffer allocate(std::int64_t n) { return {std::vector<float>(static_cast<std::size_t>(n), 0.0f)}; }

  static float at(muon::MatrixStack<const float> m, std::int64_t k, std::int64_t i, std::int64_t j, muon::Transpose t) {
    return t == muon::Transpose::yes ? m.matrix(k)[j * m.cols + i] : m.matrix(k)[i * m.cols + j];
  }
  void gemm(float alpha, muon::MatrixStack<const float> a, muon::Transpose ta, muon::MatrixStack<const float> b,
            muon::Transpose tb, float beta, muon::MatrixStack<float> c) {
    const std::int64_t inner = ta == muon::Transpose::yes ? a.rows : a.cols;
    for (std::int64_t k = 0; k < c.batch; ++k)
      for (std::int64_t i = 0; i < c.rows; ++i)
        for (std::int64_t j = 0; j < c.cols; ++j) {
          double s = 0.0;
          for (std::int64_t l = 0; l < inner; ++l) s += double{at(a, k, i, l, ta)} * at(b, k, l, j, tb);
          float& out = c.matrix(k)[i * c.cols + j];
          out = static_cast<float>(alpha * s + (beta == 0.0f ? 0.0 : beta * out));
        }
  }
  void gram(float alpha, muon::MatrixStack<const float> x, muon::GramSide side, float beta, muon::MatrixStack<float> c) {
    const auto t = side == muon::GramSide::rows ? muon::Transpose::yes : muon::Transpose::no;
    gemm(alpha, x, side == muon::GramSide::rows ? muon::Transpose::no : muon::Transpose::yes, x, t, beta, c);
  }
  void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y) {
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = alpha * x[i] + (beta == 0.0f ? 0.0f : beta * y[i]);
  }
  void normalize(muon::MatrixStack<float> x, float eps, muon::NormEps mode) {
    for (std::int64_t k = 0; k < x.batch; ++k) {
      double ss = 0.0;
      for (std::int64_t i = 0; i < x.matrix_size(); ++i) ss += double{x.matrix(k)[i]} * x.matrix(k)[i];
      const double n = std::sqrt(ss);
      const double d = mode == muon::NormEps::add ? n + eps : std::max(n, double{eps});
      for (std::int64_t i = 0; i < x.matrix_size(); ++i) x.matrix(k)[i] = static_cast<float>(x.matrix(k)[i] / d);
    }
  }
  void momentum(std::span<float> m, std::span<const float> g, muon::MomentumStep s, std::span<float> u) {
    const float gain = s.form == muon::MomentumForm::sum ? 1.0f : 1.0f - s.mu;
    for (std::size_t i = 0; i < m.size(); ++i) {
      m[i] = s.mu * m[i] + gain * g[i] * s.grad_scale;
      u[i] = s.nesterov ? gain * g[i] * s.grad_scale + s.mu * m[i] : m[i];
    }
  }
  void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v, muon::AdamWStep s) {
    const double bc1 = 1.0 - std::pow(double{s.beta1}, double(s.step));
    const double bc2 = 1.0 - std::pow(double{s.beta2}, double(s.step));
    for (std::size_t i = 0; i < w.size(); ++i) {
      const double gi = double{g[i]} * s.grad_scale;
      m[i] = static_cast<float>(s.beta1 * m[i] + (1.0 - s.beta1) * gi);
      v[i] = static_cast<float>(s.beta2 * v[i] + (1.0 - s.beta2) * gi * gi);
      w[i] = static_cast<float>(w[i] * (1.0 - double{s.lr} * s.weight_decay) -
                                s.lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + s.eps));
    }
  }
  double sum_squares(std::span<const float> x) {
    double s = 0.0;
    for (float v : x) s += double{v} * v;
    return s;
  }
  void to_host(std::span<const float> x, std::span<float> host) { std::copy(x.begin(), x.end(), host.begin()); }
  void from_host(std::span<const float> host, std::span<float> y) { std::copy(host.begin(), host.end(), y.begin()); }
};

static_assert(muon::Backend<ToyBackend>);

std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::vector<float> v(n);
  unsigned s = seed;
  for (float& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / 16777216.0f - 0.5f;
  }
  return v;
}

// A small hybrid table: a Muon matrix, a 3-D expert stack, an embedding (AdamW), a norm (AdamW).
struct Model {
  std::vector<float> w = random_values(24 * 40, 1), experts = random_values(3 * 16 * 24, 2),
                     emb = random_values(50 * 8, 3), norm = std::vector<float>(8, 1.0f);
  std::vector<float> dw = random_values(w.size(), 4), dexperts = random_values(experts.size(), 5),
                     demb = random_values(emb.size(), 6), dnorm = random_values(norm.size(), 7);
  std::vector<muon::Parameter> table() {
    return {{"w", muon::Role::matrix, {w.data(), {24, 40}}, {dw.data(), {24, 40}}},
            {"experts", muon::Role::matrix, {experts.data(), {3, 16, 24}}, {dexperts.data(), {3, 16, 24}}},
            {"emb", muon::Role::embedding, {emb.data(), {50, 8}}, {demb.data(), {50, 8}}},
            {"norm", muon::Role::norm, {norm.data(), {8}}, {dnorm.data(), {8}}}};
  }
};

}  // namespace

TEST_CASE("the toy backend runs the same Muon and AdamW rules") {
  Model model;
  const Model before = model;
  muon::Optimizer<ToyBackend> opt(model.table(), {.lr = 0.02});
  for (int i = 0; i < 3; ++i) (void)opt.step();
  CHECK(opt.step_count() == 3);
  CHECK(model.w != before.w);
  CHECK(model.emb != before.emb);
  // Muon's update has RMS 0.2·lr per step (orthogonal O times 0.2·√max(A,B)); with decay and
  // three steps of correlated updates the change stays within a few times that.
  double ss = 0.0;
  for (std::size_t i = 0; i < model.w.size(); ++i) ss += std::pow(model.w[i] - before.w[i], 2);
  const double rms = std::sqrt(ss / model.w.size());
  CHECK(rms > 0.2 * 0.02);
  CHECK(rms < 3 * 3 * 0.2 * 0.02);
}

#ifdef MUON_HAS_EIGEN
TEST_CASE("Eigen backend equals the toy backend on the same steps") {
  Model a, b;
  muon::Optimizer<ToyBackend> toy(a.table(), {.lr = 0.02, .max_grad_norm = 1.0});
  // fp32 products: the toy backend multiplies in fp32 (the bf16 path has its own tests).
  muon::Optimizer<muon::EigenBackend> eigen(b.table(), {.lr = 0.02, .max_grad_norm = 1.0},
                                            muon::EigenBackend({.ns_precision = muon::NsPrecision::fp32}));
  for (int i = 0; i < 3; ++i) {
    (void)toy.step();
    (void)eigen.step();
  }
  // Same formulas, other summation orders (the toy sums in double): parameters of O(0.5) agree
  // to a few fp32 ulps amplified by five Newton–Schulz iterations.
  for (auto [x, y] : {std::pair{&a.w, &b.w}, {&a.experts, &b.experts}, {&a.emb, &b.emb}, {&a.norm, &b.norm}})
    for (std::size_t i = 0; i < x->size(); ++i) CHECK((*x)[i] == doctest::Approx((*y)[i]).epsilon(1e-4));
}

TEST_CASE("every Eigen backend operation conforms to the toy backend") {
  ToyBackend toy;
  muon::EigenBackend cpu({.ns_precision = muon::NsPrecision::fp32});
  const auto a = random_values(2 * 6 * 9, 11), b = random_values(2 * 9 * 5, 12), c0 = random_values(2 * 6 * 5, 13);
  const auto close = [](const std::vector<float>& x, const std::vector<float>& y) {
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(x[i] == doctest::Approx(y[i]).epsilon(1e-5));
  };
  using muon::Transpose;
  // gemm, all four transpose combinations (B and A reinterpreted with swapped shapes).
  for (auto ta : {Transpose::no, Transpose::yes})
    for (auto tb : {Transpose::no, Transpose::yes}) {
      const muon::MatrixStack<const float> A{a.data(), 2, ta == Transpose::no ? 6 : 9, ta == Transpose::no ? 9 : 6};
      const muon::MatrixStack<const float> B{b.data(), 2, tb == Transpose::no ? 9 : 5, tb == Transpose::no ? 5 : 9};
      auto x = c0, y = c0;
      toy.gemm(0.7f, A, ta, B, tb, 0.3f, {x.data(), 2, 6, 5});
      cpu.gemm(0.7f, A, ta, B, tb, 0.3f, {y.data(), 2, 6, 5});
      close(x, y);
    }
  for (auto side : {muon::GramSide::rows, muon::GramSide::cols}) {
    const std::int64_t n = side == muon::GramSide::rows ? 6 : 9;
    auto x = random_values(2 * n * n, 14);  // C must be symmetric: make it so
    for (std::int64_t k = 0; k < 2; ++k)
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < i; ++j) x[(k * n + j) * n + i] = x[(k * n + i) * n + j];
    auto y = x;
    toy.gram(0.5f, {a.data(), 2, 6, 9}, side, 0.25f, {x.data(), 2, n, n});
    cpu.gram(0.5f, {a.data(), 2, 6, 9}, side, 0.25f, {y.data(), 2, n, n});
    close(x, y);
  }
  {
    auto x = random_values(a.size(), 17), y = x;
    toy.axpby(1.5f, a, -0.5f, x);
    cpu.axpby(1.5f, a, -0.5f, y);
    close(x, y);
  }
  for (auto mode : {muon::NormEps::add, muon::NormEps::max}) {
    auto x = a, y = a;
    toy.normalize({x.data(), 2, 6, 9}, 1e-7f, mode);
    cpu.normalize({y.data(), 2, 6, 9}, 1e-7f, mode);
    close(x, y);
  }
  for (auto form : {muon::MomentumForm::sum, muon::MomentumForm::ema})
    for (bool nesterov : {true, false}) {
      auto mx = c0, my = c0;
      std::vector<float> ux(c0.size()), uy(c0.size());
      const muon::MomentumStep s{0.9f, form, nesterov, 0.5f};
      toy.momentum(mx, std::span(a).first(c0.size()), s, ux);
      cpu.momentum(my, std::span(a).first(c0.size()), s, uy);
      close(mx, my);
      close(ux, uy);
    }
  {
    auto wx = c0, wy = c0, mx = random_values(c0.size(), 15), my = mx, vx = random_values(c0.size(), 16);
    for (float& v : vx) v = v * v;
    auto vy = vx;
    const muon::AdamWStep s{0.01f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, 3};
    toy.adamw(wx, std::span(a).first(c0.size()), mx, vx, s);
    cpu.adamw(wy, std::span(a).first(c0.size()), my, vy, s);
    close(wx, wy);
    close(mx, my);
    close(vx, vy);
  }
  CHECK(toy.sum_squares(a) == doctest::Approx(cpu.sum_squares(a)).epsilon(1e-12));
}
#endif
