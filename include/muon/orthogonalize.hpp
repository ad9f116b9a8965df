// muon/orthogonalize.hpp: Newton–Schulz orthogonalisation of a stack of same-shape matrices.
//
// orthogonalize(backend, X, options, workspace) replaces each matrix of X by an approximation of
// its polar factor U·Vᵀ (X = U·Σ·Vᵀ), in place. Each matrix is normalised on its own, so a 3-D
// expert tensor [E, rows, cols] is orthogonalised per expert, never as one flattened matrix.
//
// The Gram matrix is always formed on the small side: A = X·Xᵀ for wide matrices and A = Xᵀ·X
// (with X ← X·B on the right) for tall ones, which equals transposing, iterating and transposing
// back, without the copies. With `symmetric_products` X·Xᵀ and A² = A·Aᵀ go through the backend's
// `gram`, which may compute one triangle (about 1.5× fewer flops on square matrices).
//
//   muon::NsWorkspace ws(backend, stack);
//   muon::orthogonalize(backend, stack, muon::NsOptions{}, ws);
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "muon/backend.hpp"
#include "muon/coefficients.hpp"
#include "muon/error.hpp"

namespace muon {

struct NsOptions {
  NsSchedule schedule = keller_quintic();
  int steps = 5;
  float eps = 1e-7f;
  NormEps eps_mode = NormEps::add;
  bool symmetric_products = true;
};

inline void validate(const NsOptions& o) {
  if (o.schedule.triples.empty())
    throw InvalidArgument("NsOptions.schedule '" + o.schedule.name + "' has no coefficient triples");
  if (o.steps < 1 || o.steps > 100)
    throw InvalidArgument("NsOptions.steps must be in [1, 100], got " + std::to_string(o.steps));
  if (!(o.eps > 0.0f) || !std::isfinite(o.eps))
    throw InvalidArgument("NsOptions.eps must be a positive finite number (1e-7 is the usual value)");
  if (!(o.schedule.norm_scale > 0.0))
    throw InvalidArgument("NsOptions.schedule.norm_scale must be positive");
}

// Scratch for one stack shape; reuse it across steps.
template <Backend B>
struct NsWorkspace {
  NsWorkspace(B& backend, MatrixStack<const float> x)
      : small_side(std::min(x.rows, x.cols)),
        gram(backend.allocate(x.batch * small_side * small_side)),
        poly(backend.allocate(x.batch * small_side * small_side)),
        next(backend.allocate(x.size())) {}
  NsWorkspace(B& backend, MatrixStack<float> x) : NsWorkspace(backend, x.as_const()) {}

  std::int64_t small_side;
  typename B::Buffer gram;  // A = X·Xᵀ
  typename B::Buffer poly;  // B = b·A + c·A²
  typename B::Buffer next;  // the next X
};

template <Backend B>
void orthogonalize(B& backend, MatrixStack<float> x, const NsOptions& options, NsWorkspace<B>& ws) {
  validate(options);
  const std::int64_t n = std::min(x.rows, x.cols);
  if (ws.small_side != n || ws.next.span().size() != static_cast<std::size_t>(x.size()))
    throw InvalidArgument("orthogonalize: the workspace was made for another stack shape");
  const bool wide = x.rows <= x.cols;
  const GramSide side = wide ? GramSide::rows : GramSide::cols;
  const double s = options.schedule.norm_scale;

  // X/(s·‖X‖ + ε) = (1/s)·X/(‖X‖ + ε/s): normalise with ε/s, fold 1/s into the first polynomial.
  backend.normalize(x, static_cast<float>(options.eps / s), options.eps_mode);

  MatrixStack<float> gram{ws.gram.span().data(), x.batch, n, n};
  MatrixStack<float> poly{ws.poly.span().data(), x.batch, n, n};
  MatrixStack<float> cur = x;
  MatrixStack<float> nxt{ws.next.span().data(), x.batch, x.rows, x.cols};

  for (int k = 0; k < options.steps; ++k) {
    NsCoefficients t = options.schedule.at(k);
    if (k == 0 && s != 1.0) t = {t.a / s, t.b / (s * s * s), t.c / (s * s * s * s * s)};
    const auto a = static_cast<float>(t.a), b = static_cast<float>(t.b), c = static_cast<float>(t.c);

    if (options.symmetric_products) {
      backend.gram(1.0f, cur.as_const(), side, 0.0f, gram);
    } else if (wide) {
      backend.gemm(1.0f, cur.as_const(), Transpose::no, cur.as_const(), Transpose::yes, 0.0f, gram);
    } else {
      backend.gemm(1.0f, cur.as_const(), Transpose::yes, cur.as_const(), Transpose::no, 0.0f, gram);
    }
    // B = b·A + c·A²; A is symmetric, so A² = A·Aᵀ is a Gram product too.
    backend.axpby(b, gram.as_const().span(), 0.0f, poly.span());
    if (c != 0.0f) {
      if (options.symmetric_products)
        backend.gram(c, gram.as_const(), GramSide::rows, 1.0f, poly);
      else
        backend.gemm(c, gram.as_const(), Transpose::no, gram.as_const(), Transpose::no, 1.0f, poly);
    }
    // X' = a·X + B·X (wide) or a·X + X·B (tall).
    backend.axpby(a, cur.as_const().span(), 0.0f, nxt.span());
    if (wide)
      backend.gemm(1.0f, poly.as_const(), Transpose::no, cur.as_const(), Transpose::no, 1.0f, nxt);
    else
      backend.gemm(1.0f, cur.as_const(), Transpose::no, poly.as_const(), Transpose::no, 1.0f, nxt);
    std::swap(cur, nxt);
  }
  if (cur.data != x.data) backend.axpby(1.0f, cur.as_const().span(), 0.0f, x.span());
}

// Convenience form that allocates its own workspace (use the workspace form in a training loop).
template <Backend B>
void orthogonalize(B& backend, MatrixStack<float> x, const NsOptions& options = {}) {
  NsWorkspace<B> ws(backend, x);
  orthogonalize(backend, x, options, ws);
}

}  // namespace muon
