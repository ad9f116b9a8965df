// muon/backend.hpp: THE seam between the update rules and the hardware.
//
// The Muon and AdamW rules (muon_rule.hpp, adamw_rule.hpp, orthogonalize.hpp) are written once,
// against the operations of `muon::Backend`. A backend brings its own memory (`Buffer`, from
// `allocate`) and implements the operations on float32 data in that memory. The Eigen backend
// (backends/eigen.hpp) models it on the CPU; tests/test_toy_backend.cpp models it with
// std::vector and plain loops, which is the proof that the seam is small and real.
//
// Conventions every backend must keep (the rules rely on them):
//   - β = 0 means the output is not read (it may hold NaN), as in BLAS;
//   - outputs never alias inputs unless an operation says so;
//   - `gram` must leave the whole n×n result filled (a backend that computes one triangle
//     mirrors it);
//   - `sum_squares` accumulates in double, so a non-finite element shows as a non-finite sum:
//     the one pass serves both the clipping norm and the NaN/Inf guard.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <type_traits>

#include "muon/schema.hpp"
#include "muon/tensor.hpp"

namespace muon {

enum class Transpose : bool { no = false, yes = true };

// The operand precision of a backend's matrix products, that is of Newton–Schulz: fp32, or bf16
// operands with fp32 accumulation and results (as torch.optim.Muon and Moonlight run NS).
// `automatic` is bf16 where the hardware multiplies bf16 natively, fp32 elsewhere.
enum class NsPrecision { automatic, fp32, bf16 };

// Which Gram matrix of X (r×c): X·Xᵀ (r×r, `rows`) or Xᵀ·X (c×c, `cols`).
enum class GramSide { rows, cols };

// Where ε goes in the Frobenius normalisation before Newton–Schulz. The references disagree:
// KellerJordan/Muon and Moonlight use X/(‖X‖+ε) (`add`); torch.optim.Muon uses X/max(‖X‖,ε) (`max`).
enum class NormEps { add, max };

template <>
struct EnumNames<NsPrecision> {
  static constexpr std::array names{std::pair{NsPrecision::automatic, "automatic"}, std::pair{NsPrecision::fp32, "fp32"},
                                    std::pair{NsPrecision::bf16, "bf16"}};
};
template <>
struct EnumNames<GramSide> {
  static constexpr std::array names{std::pair{GramSide::rows, "rows"}, std::pair{GramSide::cols, "cols"}};
};
template <>
struct EnumNames<NormEps> {
  static constexpr std::array names{std::pair{NormEps::add, "add"}, std::pair{NormEps::max, "max"}};
};

// Momentum buffer forms. `sum`: M ← μM + G, Nesterov input G + μM (Moonlight, the paper).
// `ema`: M ← μM + (1−μ)G, Nesterov input (1−μ)G + μM (KellerJordan/Muon, torch.optim.Muon code).
enum class MomentumForm { sum, ema };

// The numbers that change from step to step, for one group of parameters. They reach the
// backend as a pointer into one small block in the backend's memory (StepDriver refreshes it
// with one copy per step) and operations read them when they run, never when they are enqueued:
// so a recorded or captured step (a CUDA graph) replays with each step's own values, as
// torch.optim.AdamW(capturable=True) keeps its step and lr on the device.
struct StepValues {
  float lr = 0.0f;               // the group's lr, scheduled
  float decay = 1.0f;            // 1 − lr·weight_decay, the decoupled decay
  float grad_scale = 1.0f;       // the clipping factor, applied to G on the fly (1: not clipped)
  float step = 0.0f;             // t, 1-based (exact up to 2²⁴ steps)
  float adamw_step_size = 0.0f;  // lr/(1 − β₁ᵗ), AdamW's bias-corrected step
  float adamw_bc2_sqrt = 1.0f;   // √(1 − β₂ᵗ)
};
// The block is a backend Buffer of floats viewed as StepValues entries.
inline constexpr std::int64_t kStepValuesFloats = sizeof(StepValues) / sizeof(float);
static_assert(sizeof(StepValues) == kStepValuesFloats * sizeof(float) && std::is_standard_layout_v<StepValues>);

template <>
struct EnumNames<MomentumForm> {
  static constexpr std::array names{std::pair{MomentumForm::sum, "sum"}, std::pair{MomentumForm::ema, "ema"}};
};

struct MomentumStep {
  float mu = 0.95f;
  MomentumForm form = MomentumForm::sum;
  bool nesterov = true;
  const StepValues* values = nullptr;  // grad_scale
};

// One torch-semantics AdamW step on one tensor: W ← W·decay, then
// W ← W − step_size·m/(√v/bc2_sqrt + ε) with the moments updated first.
struct AdamWStep {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  const StepValues* values = nullptr;  // grad_scale, decay, adamw_step_size, adamw_bc2_sqrt
};

// Muon's decay and apply: W ← decay·W − (lr·scale)·O, with lr·scale rounded to float once.
struct UpdateStep {
  double scale = 1.0;                  // the update scale of the group's shape (ScaleMode)
  const StepValues* values = nullptr;  // lr, decay
};

// NorMuon's per-row second moment (muon_rule.hpp): for row i of matrix k of a stack,
// v[k·rows + i] ← β₂·v + (1−β₂)·mean_j X², then X_row ← X_row·f with f = 1/(√v + ε). The mean and
// the new v are computed in double and v is rounded to float once; f is rounded to float, and
// the row is multiplied by it in float, so backends agree to an fp32 ulp.
struct RowNormStep {
  float beta2 = 0.95f;
  float eps = 1e-8f;
};

[[nodiscard]] inline const StepValues* step_values_of(std::span<float> block, std::size_t entry = 0) {
  return reinterpret_cast<const StepValues*>(block.data()) + entry;
}

template <class B>
concept Backend = requires(B& b, typename B::Buffer& buffer, std::int64_t n, float s,
                           MatrixStack<float> out, MatrixStack<const float> in, Transpose t,
                           GramSide side, NormEps eps_mode, std::span<float> y,
                           std::span<const float> x, std::span<float> host,
                           std::span<const float> host_in, MomentumStep momentum,
                           AdamWStep adamw, UpdateStep update, RowNormStep row_norm,
                           typename B::HostBuffer& staging) {
  typename B::Buffer;
  typename B::HostBuffer;
  // Zero-filled memory for n floats in the backend's memory space; the backend may pool it.
  { b.allocate(n) } -> std::same_as<typename B::Buffer>;
  { buffer.span() } -> std::same_as<std::span<float>>;
  // Host memory for n floats that `upload` may copy from without waiting (pinned on a GPU).
  { b.allocate_host(n) } -> std::same_as<typename B::HostBuffer>;
  { staging.span() } -> std::same_as<std::span<float>>;
  // C = α·op(A)·op(B) + β·C, per matrix of same-shape stacks (A and B may alias each other).
  b.gemm(s, in, t, in, t, s, out);
  // C = α·X·Xᵀ + β·C (or Xᵀ·X), C symmetric: a backend may compute one triangle and mirror.
  b.gram(s, in, side, s, out);
  // y = α·x + β·y, elementwise (x may equal y).
  b.axpby(s, x, s, y);
  // Per matrix of the stack: X ← X/(‖X‖_F + ε) or X/max(‖X‖_F, ε).
  b.normalize(out, s, eps_mode);
  // NorMuon's per-row normalisation: v (batch·rows floats) updated, each row of X divided in place.
  b.normalize_rows(out, y, row_norm);
  // Fused momentum: M updated in place from G; U receives the Newton–Schulz input.
  b.momentum(y, x, momentum, y);
  // Fused AdamW on one tensor: W, m, v updated in place from G.
  b.adamw(y, x, y, y, adamw);
  // Muon's decay and apply of the orthogonalised update: W ← decay·W − (lr·scale)·O.
  b.update(y, x, update);
  // Σ x², accumulated in double.
  { b.sum_squares(x) } -> std::same_as<double>;
  // Copies between the backend's memory and host memory (state save and load); they wait.
  b.to_host(x, host);
  b.from_host(host_in, y);
  // The step block's copy, in the backend's order, from memory of allocate_host: it may return
  // before the copy runs, and a captured step replays it (a CUDA graph's memcpy node).
  b.upload(host_in, y);
};

}  // namespace muon
