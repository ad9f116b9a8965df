// The `moonlight compare` subcommand: how many tokens each run needs to reach a baseline run's
// final validation loss, and one plot of all their validation curves (the Muon-vs-AdamW study,
// docs/moonlight-study.md).
//
//   moonlight compare --baseline runs/adamw-2e-3 --runs runs/muon-* --plot study.png
#pragma once

#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <moonlight/plot.hpp>

#include "loss_curves.hpp"

namespace moonlight::cli {

// The first token count at which `curve` reaches `target` (linear between evaluations), if it does.
inline std::optional<double> tokens_to_reach(const Series& curve, double target) {
  for (std::size_t i = 0; i < curve.y.size(); ++i) {
    if (curve.y[i] > target) continue;
    if (i == 0) return curve.x[0];
    const double f = (curve.y[i - 1] - target) / (curve.y[i - 1] - curve.y[i]);
    return curve.x[i - 1] + f * (curve.x[i] - curve.x[i - 1]);
  }
  return std::nullopt;
}

inline Series validation_curve(const std::filesystem::path& run) {
  const std::filesystem::path metrics = run_metrics(run);
  std::vector<Series> curves = loss_curves(metrics, run.filename().string());
  if (curves.size() < 2) {
    throw muon::InvalidArgument("run '" + run.string() + "' logged no validation loss; train it with eval_every > 0");
  }
  Series val = std::move(curves[1]);
  val.label = run.filename().string();
  return val;
}

inline int compare(const std::filesystem::path& baseline, const std::vector<std::filesystem::path>& runs,
                   const std::filesystem::path& plot) {
  const Series base = validation_curve(baseline);
  const double target = base.y.back();
  const std::optional<double> base_tokens = tokens_to_reach(base, target);
  std::printf("target: %s's final validation loss %.4f, reached at %.0f tokens\n\n", base.label.c_str(), target,
              *base_tokens);
  std::printf("%-28s %12s %16s %10s\n", "run", "final loss", "tokens to target", "vs base");
  std::vector<Series> all{base};
  for (const std::filesystem::path& run : runs) {
    if (std::filesystem::equivalent(run, baseline)) continue;
    Series curve = validation_curve(run);
    const std::optional<double> tokens = tokens_to_reach(curve, target);
    if (tokens) {
      std::printf("%-28s %12.4f %16.0f %9.1f%%\n", curve.label.c_str(), curve.y.back(), *tokens,
                  100.0 * *tokens / *base_tokens);
    } else {
      std::printf("%-28s %12.4f %16s %10s\n", curve.label.c_str(), curve.y.back(), "not reached", "-");
    }
    all.push_back(std::move(curve));
  }
  if (!plot.empty()) {
    plot_curves(plot, all, {.title = "Validation loss", .x_label = "tokens", .y_label = "cross-entropy (nats)"});
    std::printf("\nplot: %s\n", plot.c_str());
  }
  return 0;
}

}  // namespace moonlight::cli
