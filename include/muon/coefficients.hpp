// muon/coefficients.hpp: Newton–Schulz coefficient schedules, as data.
//
// Iteration k of Newton–Schulz applies the odd quintic p(σ) = aσ + bσ³ + cσ⁵ to every singular
// value, with (a, b, c) = `triples[k]`; iterations past the end of the list repeat the last
// triple. `norm_scale` is the s of the normalisation X/(s·‖X‖ + ε) that a schedule was designed
// for (1.02 for the safety-baked Polar Express). Values and sources: docs/algorithms.md §3.
//
//   muon::NsOptions ns{.schedule = muon::polar_express(), .steps = 5};
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "muon/error.hpp"
#include "muon/schema.hpp"

namespace muon {

struct NsCoefficients {
  double a, b, c;
};

struct NsSchedule {
  std::string name;
  std::vector<NsCoefficients> triples;
  double norm_scale = 1.0;

  // The triple of iteration k (0-based), repeating the last one.
  [[nodiscard]] NsCoefficients at(int k) const {
    return triples[static_cast<std::size_t>(std::min<int>(k, static_cast<int>(triples.size()) - 1))];
  }
};

template <>
struct Schema<NsCoefficients> {
  static constexpr auto fields = std::tuple{field("a", &NsCoefficients::a), field("b", &NsCoefficients::b),
                                            field("c", &NsCoefficients::c)};
};
template <>
struct Schema<NsSchedule> {
  static constexpr auto fields = std::tuple{field("name", &NsSchedule::name), field("triples", &NsSchedule::triples),
                                            field("norm_scale", &NsSchedule::norm_scale, kPositive)};
  static void check(const NsSchedule& s, const std::string& path) {
    if (s.triples.empty()) throw InvalidArgument(path + ".triples is empty: a schedule needs at least one (a, b, c)");
  }
};

// Keller Jordan's quintic, one triple for every iteration (KellerJordan/Muon, Moonlight,
// torch.optim.Muon). Maximises the slope at 0; singular values end roughly in (0.7, 1.2).
[[nodiscard]] inline NsSchedule keller_quintic() {
  return {"keller", {{3.4445, -4.7750, 2.0315}}, 1.0};
}

// Jiacheng You's five per-iteration quintics (Emerging-Optimizers / Megatron "quintic").
[[nodiscard]] inline NsSchedule you_quintic() {
  return {"you",
          {{4.0848, -6.8946, 2.9270},
           {3.9505, -6.3029, 2.6377},
           {3.7418, -5.5913, 2.3037},
           {2.8769, -3.1427, 1.2046},
           {2.8366, -3.0525, 1.2012}},
          1.0};
}

// Polar Express (arXiv 2505.16932), the five-iteration set of modded-nanogpt, microsoft/dion and
// nanochat: safety factor 1.02 baked into all but the last, meant for X/(1.02·‖X‖ + ε).
[[nodiscard]] inline NsSchedule polar_express() {
  return {"polar_express",
          {{8.156554524902461, -22.48329292557795, 15.878769915207462},
           {4.042929935166739, -2.808917465908714, 0.5000178451051316},
           {3.8916678022926607, -2.772484153217685, 0.5060648178503393},
           {3.285753657755655, -2.3681294933425376, 0.46449024233003106},
           {2.3465413258596377, -1.7097828382687081, 0.42323551169305323}},
          1.02};
}

// CANS (arXiv 2506.10935; Emerging-Optimizers "cans").
[[nodiscard]] inline NsSchedule cans() {
  return {"cans",
          {{8.4703, -25.1081, 18.6293},
           {4.1828, -3.1087, 0.5806},
           {3.9619, -2.9541, 0.5630},
           {3.2866, -2.4647, 0.5074},
           {2.2737, -1.6447, 0.4162}},
          1.0};
}

}  // namespace muon
