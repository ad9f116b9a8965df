// muon/muon_rule.hpp: the Muon update of one shape group, as Moonlight has it.
//
// For every matrix: momentum → Nesterov input U → Newton–Schulz (batched over all matrices of
// the same shape) → decoupled decay W ← W·(1 − lr·wd) with the unadjusted lr → W ← W − lr·s·O.
// s is the update scale (ScaleMode); Moonlight's 0.2·√max(rows, cols) gives the update AdamW's
// RMS, so one lr and wd serve both rules (arXiv 2502.16982, Eq. 4).
//
// NorMuon (arXiv 2510.05491, MuonOptions::normuon) adds one stage after Newton–Schulz: each row
// (output neuron) of O is divided by the root of an EMA of its mean square,
// v ← β₂v + (1−β₂)·mean_j O², O ← O/(√v + ε), and the matrix is then rescaled to
// ‖O‖_F = √min(rows, cols), the Frobenius norm of an orthogonal matrix, so the scale mode gives
// the update the RMS it gives plain Muon for an orthogonal O (docs/algorithms.md §12).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>

#include "muon/backend.hpp"
#include "muon/orthogonalize.hpp"

namespace muon {

// How the orthogonalised update is scaled; names say the formula, since the references'
// names collide (docs/algorithms.md §4).
enum class ScaleMode {
  match_adamw_rms,  // 0.2·√max(rows, cols): update RMS 0.2, like AdamW (Moonlight, the default)
  keller,           // √max(1, rows/cols) (KellerJordan/Muon, torch.optim.Muon "original")
  none,             // 1
};

template <>
struct EnumNames<ScaleMode> {
  static constexpr std::array names{std::pair{ScaleMode::match_adamw_rms, "match_adamw_rms"},
                                    std::pair{ScaleMode::keller, "keller"}, std::pair{ScaleMode::none, "none"}};
};

// NorMuon's per-neuron second moment (docs/algorithms.md §12 gives the defaults' sources).
// Whether it is on decides the state buffers, so `enabled` is fixed for an optimizer's lifetime.
struct NorMuonOptions {
  bool enabled = false;
  float beta2 = 0.95f;
  float eps = 1e-8f;  // added to √v; positive, so a zero row stays zero instead of 0/0
};
template <>
struct Schema<NorMuonOptions> {
  static constexpr auto fields = std::tuple{field("enabled", &NorMuonOptions::enabled),
                                            field("beta2", &NorMuonOptions::beta2, kUnitInterval),
                                            field("eps", &NorMuonOptions::eps, kPositive)};
};

struct MuonOptions {
  float momentum = 0.95f;
  MomentumForm momentum_form = MomentumForm::sum;
  bool nesterov = true;
  ScaleMode scale = ScaleMode::match_adamw_rms;
  NsOptions ns{};
  NorMuonOptions normuon{};
};
template <>
struct Schema<MuonOptions> {
  static constexpr auto fields = std::tuple{
      field("momentum", &MuonOptions::momentum, kUnitInterval), field("momentum_form", &MuonOptions::momentum_form),
      field("nesterov", &MuonOptions::nesterov), field("scale", &MuonOptions::scale), field("ns", &MuonOptions::ns),
      field("normuon", &MuonOptions::normuon)};
};

[[nodiscard]] inline double update_scale(ScaleMode mode, std::int64_t rows, std::int64_t cols) {
  switch (mode) {
    case ScaleMode::match_adamw_rms: return 0.2 * std::sqrt(static_cast<double>(std::max(rows, cols)));
    case ScaleMode::keller:
      return std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
    case ScaleMode::none: return 1.0;
  }
  return 1.0;
}

// One Muon matrix (or expert stack) as the rule sees it: its value, gradient and momentum, all in
// the backend's memory, and where its Newton–Schulz input lives inside the group's stack.
// `normuon_v` holds one second moment per row of each matrix (empty when NorMuon is off).
struct MuonSlot {
  std::span<float> value;
  std::span<const float> grad;
  std::span<float> momentum;
  std::span<float> ns_input;
  std::span<float> normuon_v{};
};

// Updates every matrix of one shape group: `stack` holds all their Newton–Schulz inputs back to
// back (rows×cols each), so one batched orthogonalisation serves the whole group. The step's lr,
// decay and clipping factor are read from `values` (backend memory) when the operations run.
template <Backend B>
void muon_update(B& backend, std::span<const MuonSlot> slots, MatrixStack<float> stack,
                 NsWorkspace<B>& ws, const MuonOptions& o, const StepValues* values) {
  const MomentumStep ms{o.momentum, o.momentum_form, o.nesterov, values};
  for (const MuonSlot& s : slots) backend.momentum(s.momentum, s.grad, ms, s.ns_input);
  orthogonalize(backend, stack, o.ns, ws);
  double scale = update_scale(o.scale, stack.rows, stack.cols);
  if (o.normuon.enabled) {
    const RowNormStep rn{o.normuon.beta2, o.normuon.eps};
    for (const MuonSlot& s : slots)
      backend.normalize_rows({s.ns_input.data(), std::ssize(s.ns_input) / stack.matrix_size(), stack.rows, stack.cols},
                             s.normuon_v, rn);
    // To unit Frobenius norm, then √min(rows, cols) joins the scale: the norm of an orthogonal
    // matrix. The floor only keeps an all-zero matrix (a zero gradient) at zero instead of 0/0.
    backend.normalize(stack, std::numeric_limits<float>::min(), NormEps::max);
    scale *= std::sqrt(static_cast<double>(std::min(stack.rows, stack.cols)));
  }
  const UpdateStep update{scale, values};
  for (const MuonSlot& s : slots) backend.update(s.value, s.ns_input, update);
}

}  // namespace muon
