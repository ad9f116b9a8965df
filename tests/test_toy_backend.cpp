// The proof that the seam is small and real: a backend of std::vector and plain loops, written
// from nothing but muon/backend.hpp (toy_backend.hpp), runs the same rules as the Eigen backend.
// Its results also serve as the reference in a conformance test of every Eigen backend operation.
#include <doctest/doctest.h>

#include <cmath>
#include <muon/muon.hpp>
#include <vector>

#include "hybrid_model.hpp"
#include "toy_backend.hpp"

#ifdef MUON_HAS_EIGEN
#include <muon/backends/eigen.hpp>
#endif

namespace {

using muon::test::ToyBackend;
using Model = muon::test::HybridModel;

using muon::test::lcg_values;


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
  const auto a = lcg_values(2 * 6 * 9, 11), b = lcg_values(2 * 9 * 5, 12), c0 = lcg_values(2 * 6 * 5, 13);
  const auto close = [](const std::vector<float>& x, const std::vector<float>& y) {
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(x[i] == doctest::Approx(y[i]).epsilon(1e-5));
  };
  using muon::Transpose;
  // Step 3 of a group with lr 0.01, weight decay 0.1 and a clipping factor of 0.5.
  const muon::StepValues values = muon::step_values({.lr = 0.01, .weight_decay = 0.1}, 1.0, 0.5, 3);
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
    auto x = lcg_values(2 * n * n, 14);  // C must be symmetric: make it so
    for (std::int64_t k = 0; k < 2; ++k)
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < i; ++j) x[(k * n + j) * n + i] = x[(k * n + i) * n + j];
    auto y = x;
    toy.gram(0.5f, {a.data(), 2, 6, 9}, side, 0.25f, {x.data(), 2, n, n});
    cpu.gram(0.5f, {a.data(), 2, 6, 9}, side, 0.25f, {y.data(), 2, n, n});
    close(x, y);
  }
  {
    auto x = lcg_values(a.size(), 17), y = x;
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
      const muon::MomentumStep s{0.9f, form, nesterov, &values};
      toy.momentum(mx, std::span(a).first(c0.size()), s, ux);
      cpu.momentum(my, std::span(a).first(c0.size()), s, uy);
      close(mx, my);
      close(ux, uy);
    }
  {
    auto wx = c0, wy = c0, mx = lcg_values(c0.size(), 15), my = mx, vx = lcg_values(c0.size(), 16);
    for (float& v : vx) v = v * v;
    auto vy = vx;
    const muon::AdamWStep s{0.9f, 0.95f, 1e-8f, &values};
    toy.adamw(wx, std::span(a).first(c0.size()), mx, vx, s);
    cpu.adamw(wy, std::span(a).first(c0.size()), my, vy, s);
    close(wx, wy);
    close(mx, my);
    close(vx, vy);
  }
  {
    auto x = c0, y = c0;
    const muon::UpdateStep s{0.2 * std::sqrt(6.0), &values};
    toy.update(x, std::span(a).first(c0.size()), s);
    cpu.update(y, std::span(a).first(c0.size()), s);
    close(x, y);
  }
  CHECK(toy.sum_squares(a) == doctest::Approx(cpu.sum_squares(a)).epsilon(1e-12));
}
#endif
