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
#include <vector>

#include "muon/backend.hpp"
#include "muon/coefficients.hpp"
#include "muon/error.hpp"

namespace muon {

// How the iterations are carried out; every method applies the same polynomials to X.
enum class NsMethod {
  automatic,  // `gram` where it does fewer flops (max(rows, cols) ≥ 2.5·min), else `plain`
  plain,      // every iteration: A = X·Xᵀ; X ← (aI + bA + cA²)·X
  gram,       // Gram Newton–Schulz (Dao-AILab/gram-newton-schulz): iterate on the n×n R = X·Xᵀ
              // and a factor Q with X_k = Q·X, touching the n×m X only at restarts and the end
};

struct NsOptions {
  NsSchedule schedule = keller_quintic();
  int steps = 5;
  float eps = 1e-7f;
  NormEps eps_mode = NormEps::add;
  bool symmetric_products = true;
  NsMethod method = NsMethod::automatic;
  int gram_restart = 2;  // Gram NS: X ← Q·X and R recomputed every this many iterations (0: never)
};

// Whether orthogonalize runs Gram Newton–Schulz on rows×cols matrices. Per matrix and five
// iterations with one restart it costs ≈ 6n²m + 23n³ flops against 5·(3n²m + n³) with symmetric
// products, a win once m ≥ 2n; 2.5 leaves room for GEMM being slower per flop than SYRK.
[[nodiscard]] inline bool uses_gram_ns(const NsOptions& o, std::int64_t rows, std::int64_t cols) {
  if (o.method != NsMethod::automatic) return o.method == NsMethod::gram;
  return 2 * std::max(rows, cols) >= 5 * std::min(rows, cols);
}

template <>
struct EnumNames<NsMethod> {
  static constexpr std::array names{std::pair{NsMethod::automatic, "automatic"}, std::pair{NsMethod::plain, "plain"},
                                    std::pair{NsMethod::gram, "gram"}};
};
template <>
struct Schema<NsOptions> {
  static constexpr auto fields = std::tuple{
      field("schedule", &NsOptions::schedule),  field("steps", &NsOptions::steps, Limits{.min = 1, .max = 100}),
      field("eps", &NsOptions::eps, kPositive), field("eps_mode", &NsOptions::eps_mode),
      field("symmetric_products", &NsOptions::symmetric_products), field("method", &NsOptions::method),
      field("gram_restart", &NsOptions::gram_restart, kNonNegative)};
};

inline void validate(const NsOptions& o) { validate_fields(o, "NsOptions"); }

// Optional backend capability: the most matrices of one shape the backend wants in one batched
// call. A CPU backend keeps one matrix's working set in cache this way; a backend without it
// (a GPU) gets the whole stack at once.
template <class B>
concept LimitsNsBatch = requires(const B& b, std::int64_t n) {
  { b.ns_batch_limit(n, n) } -> std::convertible_to<std::int64_t>;
};

// Optional backend capability: a backend that runs a whole Newton–Schulz itself (CudaBackend's
// bf16 path keeps X, A and B in bf16 and folds the epilogues into its GEMMs) says which shapes
// and options it takes (takes_newton_schulz) and runs them (newton_schulz); the others go down
// the portable path.
template <class B>
concept RunsNewtonSchulz = requires(B& b, const B& cb, MatrixStack<float> x, const NsOptions& o, std::int64_t n) {
  { cb.takes_newton_schulz(n, n, o) } -> std::same_as<bool>;
  b.newton_schulz(x, o);
};

// Whether `backend` runs Newton–Schulz on rows×cols stacks itself (then the portable path's
// workspace is never allocated: for a layer's experts it is gigabytes).
template <Backend B>
[[nodiscard]] bool backend_takes_newton_schulz(const B& backend, std::int64_t rows, std::int64_t cols,
                                               const NsOptions& options) {
  if constexpr (RunsNewtonSchulz<B>)
    return backend.takes_newton_schulz(rows, cols, options);
  else
    return false;
}

template <Backend B>
[[nodiscard]] std::int64_t ns_chunk(const B& backend, MatrixStack<const float> x) {
  if constexpr (LimitsNsBatch<B>)
    return std::clamp<std::int64_t>(backend.ns_batch_limit(x.rows, x.cols), 1, x.batch);
  else
    return x.batch;
}

// Scratch for one stack shape; reuse it across steps.
template <Backend B>
struct NsWorkspace {
  NsWorkspace(B& backend, MatrixStack<const float> x, const NsOptions& options = {})
      : small_side(std::min(x.rows, x.cols)),
        chunk(ns_chunk(backend, x)),
        rows(x.rows),
        cols(x.cols) {
    if (backend_takes_newton_schulz(backend, rows, cols, options)) return;
    allocate_portable(backend);
    if (uses_gram_ns(options, rows, cols)) allocate_gram_factors(backend);
  }
  NsWorkspace(B& backend, MatrixStack<float> x, const NsOptions& options = {})
      : NsWorkspace(backend, x.as_const(), options) {}

  // The portable path's buffers, made here unless the backend took the shape at construction.
  void allocate_portable(B& backend) {
    if (portable) return;
    gram = backend.allocate(chunk * small_side * small_side);
    poly = backend.allocate(chunk * small_side * small_side);
    identity = backend.allocate(chunk * small_side * small_side);
    next = backend.allocate(chunk * rows * cols);
    std::vector<float> eye(static_cast<std::size_t>(chunk * small_side * small_side), 0.0f);
    for (std::int64_t k = 0; k < chunk; ++k)
      for (std::int64_t i = 0; i < small_side; ++i) eye[static_cast<std::size_t>((k * small_side + i) * small_side + i)] = 1.0f;
    backend.from_host(eye, identity.span());
    portable = true;
  }

  // Gram NS's two extra n×n buffers, made here unless options chose Gram NS after construction.
  void allocate_gram_factors(B& backend) {
    if (gram_factors) return;
    factor = backend.allocate(chunk * small_side * small_side);
    scratch = backend.allocate(chunk * small_side * small_side);
    gram_factors = true;
  }

  std::int64_t small_side, chunk, rows, cols;
  bool portable = false;
  typename B::Buffer gram;      // A = X·Xᵀ (Gram NS: R)
  typename B::Buffer poly;      // B = b·A + c·A² + a·I
  typename B::Buffer identity;  // I, to add a·I with an n×n pass rather than an n×m one
  typename B::Buffer next;      // the next X
  bool gram_factors = false;
  typename B::Buffer factor;    // Gram NS: Q, with X_k = Q·X_0
  typename B::Buffer scratch;   // Gram NS: products that cannot be written in place
};

namespace detail {

// The triple of iteration k, with the schedule's normalisation scale s folded into the first:
// X/(s·‖X‖ + ε) = (1/s)·X/(‖X‖ + ε/s), so normalise with ε/s and apply p(x/s).
inline NsCoefficients iteration_triple(const NsOptions& o, int k) {
  const double s = o.schedule.norm_scale;
  const NsCoefficients t = o.schedule.at(k);
  if (k != 0 || s == 1.0) return t;
  return {t.a / s, t.b / (s * s * s), t.c / (s * s * s * s * s)};
}

// poly = a·I + b·A + c·A²; A is symmetric, so A² = A·Aᵀ is a Gram product too.
template <Backend B>
void polynomial(B& backend, MatrixStack<const float> gram, std::span<const float> identity, NsCoefficients t,
                bool symmetric, MatrixStack<float> poly) {
  backend.axpby(static_cast<float>(t.a), identity, 0.0f, poly.span());
  backend.axpby(static_cast<float>(t.b), gram.span(), 1.0f, poly.span());
  if (t.c == 0.0) return;
  if (symmetric)
    backend.gram(static_cast<float>(t.c), gram, GramSide::rows, 1.0f, poly);
  else
    backend.gemm(static_cast<float>(t.c), gram, Transpose::no, gram, Transpose::no, 1.0f, poly);
}

// out = P·X for wide X (the Gram matrix is X·Xᵀ), X·P for tall X (it is Xᵀ·X).
template <Backend B>
void apply_left_or_right(B& backend, MatrixStack<const float> p, MatrixStack<const float> x, MatrixStack<float> out) {
  if (x.rows <= x.cols)
    backend.gemm(1.0f, p, Transpose::no, x, Transpose::no, 0.0f, out);
  else
    backend.gemm(1.0f, x, Transpose::no, p, Transpose::no, 0.0f, out);
}

template <Backend B>
void gram_of(B& backend, MatrixStack<const float> x, bool symmetric, MatrixStack<float> out) {
  const bool wide = x.rows <= x.cols;
  if (symmetric)
    backend.gram(1.0f, x, wide ? GramSide::rows : GramSide::cols, 0.0f, out);
  else if (wide)
    backend.gemm(1.0f, x, Transpose::no, x, Transpose::yes, 0.0f, out);
  else
    backend.gemm(1.0f, x, Transpose::yes, x, Transpose::no, 0.0f, out);
}

// Gram Newton–Schulz on a normalised chunk. All of R, P = aI + bR + cR² and Q are polynomials
// in the first R, so they commute and stay symmetric: X' = P·X gives R' = P·R·P and Q' = P·Q.
// Returns where the result is (x or the workspace's `next`).
template <Backend B>
MatrixStack<float> gram_newton_schulz(B& backend, MatrixStack<float> x, const NsOptions& o, NsWorkspace<B>& ws) {
  const std::int64_t n = ws.small_side;
  const auto nn = static_cast<std::size_t>(x.batch * n * n);
  const MatrixStack<float> r{ws.gram.span().data(), x.batch, n, n};
  const MatrixStack<float> p{ws.poly.span().data(), x.batch, n, n};
  MatrixStack<float> q{ws.factor.span().data(), x.batch, n, n};
  MatrixStack<float> tmp{ws.scratch.span().data(), x.batch, n, n};
  MatrixStack<float> cur = x;
  MatrixStack<float> nxt{ws.next.span().data(), x.batch, x.rows, x.cols};
  const std::span<const float> identity = ws.identity.span().first(nn);
  const auto restarts_at = [&](int k) { return o.gram_restart > 0 && k > 0 && k % o.gram_restart == 0; };

  gram_of(backend, cur.as_const(), o.symmetric_products, r);
  bool q_is_identity = true;
  for (int k = 0; k < o.steps; ++k) {
    if (restarts_at(k)) {  // X ← Q·X and a fresh R keep rounding errors from compounding in R
      apply_left_or_right(backend, q.as_const(), cur.as_const(), nxt);
      std::swap(cur, nxt);
      gram_of(backend, cur.as_const(), o.symmetric_products, r);
      q_is_identity = true;
    }
    polynomial(backend, r.as_const(), identity, iteration_triple(o, k), o.symmetric_products, p);
    if (q_is_identity) {
      backend.axpby(1.0f, p.as_const().span(), 0.0f, q.span());
      q_is_identity = false;
    } else {
      backend.gemm(1.0f, p.as_const(), Transpose::no, q.as_const(), Transpose::no, 0.0f, tmp);
      std::swap(q, tmp);
    }
    if (k + 1 < o.steps && !restarts_at(k + 1)) {  // R is needed again: R ← P·R·P
      backend.gemm(1.0f, p.as_const(), Transpose::no, r.as_const(), Transpose::no, 0.0f, tmp);
      backend.gemm(1.0f, tmp.as_const(), Transpose::no, p.as_const(), Transpose::no, 0.0f, r);
    }
  }
  apply_left_or_right(backend, q.as_const(), cur.as_const(), nxt);
  return nxt;
}

// Newton–Schulz on `x`, whose batch is at most the workspace's chunk.
template <Backend B>
void orthogonalize_chunk(B& backend, MatrixStack<float> x, const NsOptions& options, NsWorkspace<B>& ws) {
  const std::int64_t n = ws.small_side;
  backend.normalize(x, static_cast<float>(options.eps / options.schedule.norm_scale), options.eps_mode);
  MatrixStack<float> result = x;
  if (uses_gram_ns(options, x.rows, x.cols)) {
    ws.allocate_gram_factors(backend);
    result = gram_newton_schulz(backend, x, options, ws);
  } else {
    const MatrixStack<float> gram{ws.gram.span().data(), x.batch, n, n};
    const MatrixStack<float> poly{ws.poly.span().data(), x.batch, n, n};
    const std::span<const float> identity = ws.identity.span().first(static_cast<std::size_t>(x.batch * n * n));
    MatrixStack<float> nxt{ws.next.span().data(), x.batch, x.rows, x.cols};
    for (int k = 0; k < options.steps; ++k) {
      gram_of(backend, result.as_const(), options.symmetric_products, gram);
      polynomial(backend, gram.as_const(), identity, iteration_triple(options, k), options.symmetric_products, poly);
      // X' = a·X + B·X = (B + a·I)·X for wide X, X·(B + a·I) for tall X.
      apply_left_or_right(backend, poly.as_const(), result.as_const(), nxt);
      std::swap(result, nxt);
    }
  }
  if (result.data != x.data) backend.axpby(1.0f, result.as_const().span(), 0.0f, x.span());
}

}  // namespace detail

template <Backend B>
void orthogonalize(B& backend, MatrixStack<float> x, const NsOptions& options, NsWorkspace<B>& ws) {
  validate(options);
  if (ws.rows != x.rows || ws.cols != x.cols || ws.chunk != ns_chunk(backend, x.as_const()))
    throw InvalidArgument("orthogonalize: the workspace was made for another stack shape");
  if (backend_takes_newton_schulz(backend, x.rows, x.cols, options)) {
    if constexpr (RunsNewtonSchulz<B>) backend.newton_schulz(x, options);
    return;
  }
  ws.allocate_portable(backend);
  for (std::int64_t k = 0; k < x.batch; k += ws.chunk)
    detail::orthogonalize_chunk(backend, MatrixStack<float>{x.matrix(k), std::min(ws.chunk, x.batch - k), x.rows, x.cols},
                                  options, ws);
}

// Convenience form that allocates its own workspace (use the workspace form in a training loop).
template <Backend B>
void orthogonalize(B& backend, MatrixStack<float> x, const NsOptions& options = {}) {
  NsWorkspace<B> ws(backend, x, options);
  orthogonalize(backend, x, options, ws);
}

}  // namespace muon
