#include "cuda_reference.hpp"

#include <muon/backends/eigen.hpp>

namespace muon::test::eigen_reference {

namespace {
EigenBackend& cpu() {
  static EigenBackend backend;
  return backend;
}
}  // namespace

void gemm(float alpha, MatrixStack<const float> a, Transpose ta, MatrixStack<const float> b, Transpose tb, float beta,
          MatrixStack<float> c) {
  cpu().gemm(alpha, a, ta, b, tb, beta, c);
}
void gram(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c) {
  cpu().gram(alpha, x, side, beta, c);
}
void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y) { cpu().axpby(alpha, x, beta, y); }
void normalize(MatrixStack<float> x, float eps, NormEps mode) { cpu().normalize(x, eps, mode); }
void normalize_rows(MatrixStack<float> x, std::span<float> v, RowNormStep s) { cpu().normalize_rows(x, v, s); }
void momentum(std::span<float> m, std::span<const float> g, MomentumStep s, std::span<float> u) {
  cpu().momentum(m, g, s, u);
}
void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v, AdamWStep s) {
  cpu().adamw(w, g, m, v, s);
}
void update(std::span<float> w, std::span<const float> o, UpdateStep s) { cpu().update(w, o, s); }
double sum_squares(std::span<const float> x) { return cpu().sum_squares(x); }
void orthogonalize(MatrixStack<float> x, const NsOptions& options) { muon::orthogonalize(cpu(), x, options); }
void optimizer_steps(std::vector<Parameter> params, const Options& options, int steps) {
  Optimizer<EigenBackend> opt(std::move(params), options);
  for (int i = 0; i < steps; ++i) (void)opt.step();
}

}  // namespace muon::test::eigen_reference
