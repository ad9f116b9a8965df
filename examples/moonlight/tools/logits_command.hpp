// The `moonlight logits` subcommand: how each run's largest attention logits evolved over training,
// the quantity QK-clip caps (docs/moonlight-training.md), as a table and one plot
// (docs/moonlight-study.md).
//
//   moonlight logits --runs runs/study/muon-8e-3-s1 runs/study/muon-qkclip-8e-3-s1 --plot logits.png
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <moonlight/plot.hpp>
#include <nlohmann/json.hpp>

#include "loss_curves.hpp"
#include "muon/error.hpp"

namespace moonlight::cli {

// One run's per-head maxima, step by step, from the `max_logits` and `qk_clipped` fields of its
// metrics.jsonl.
struct LogitHistory {
  std::string label{};                     // the run directory's name
  std::int64_t layers = 0, heads = 0;
  std::vector<double> tokens{};            // per logged step
  std::vector<std::vector<double>> maxima{};  // per logged step: [layer * heads + head]; NaN where null
  std::int64_t clipped_heads = 0;          // the sum of qk_clipped: head rescalings over the run
  std::int64_t clipping_steps = 0;         // steps that rescaled at least one head
};

inline LogitHistory logit_history(const std::filesystem::path& run) {
  const std::filesystem::path metrics = run_metrics(run);
  LogitHistory h{.label = run.filename().string()};
  for_each_step(metrics, [&](const nlohmann::json& j) {
    if (!j.contains("max_logits")) return;
    const nlohmann::json& by_layer = j.at("max_logits");
    const std::string where = metrics.string() + ": step " + j.value("step", nlohmann::json()).dump();
    if (!by_layer.is_array() || by_layer.empty() || !by_layer.front().is_array() || by_layer.front().empty()) {
      throw muon::InvalidArgument(where + " logs max_logits that are not a [layer][head] array");
    }
    if (h.maxima.empty()) {
      h.layers = static_cast<std::int64_t>(by_layer.size());
      h.heads = static_cast<std::int64_t>(by_layer.front().size());
    }
    std::vector<double> step;
    step.reserve(static_cast<std::size_t>(h.layers * h.heads));
    for (const nlohmann::json& row : by_layer) {
      if (!row.is_array() || static_cast<std::int64_t>(row.size()) != h.heads) break;
      // JSON has no NaN: a non-finite maximum (a diverged step) is written as null.
      for (const nlohmann::json& v : row) step.push_back(v.is_number() ? v.get<double>() : std::nan(""));
    }
    if (static_cast<std::int64_t>(step.size()) != h.layers * h.heads || static_cast<std::int64_t>(by_layer.size()) != h.layers) {
      throw muon::InvalidArgument(where + " logs max_logits of another shape than the run's first step (" +
                                  std::to_string(h.layers) + " layers of " + std::to_string(h.heads) + " heads)");
    }
    h.tokens.push_back(j.at("tokens").get<double>());
    h.maxima.push_back(std::move(step));
    const std::int64_t clipped = j.value("qk_clipped", std::int64_t{0});
    h.clipped_heads += clipped;
    h.clipping_steps += clipped > 0 ? 1 : 0;
  });
  if (h.maxima.empty()) {
    throw muon::InvalidArgument("run '" + run.string() + "' logged no max_logits (it predates them); retrain it with `moonlight train`");
  }
  return h;
}

// The larger of two maxima, NaN-keeping as QK-clip's reduction is: a diverged head stays visible.
inline double nan_max(double a, double b) { return std::isnan(a) || std::isnan(b) ? std::nan("") : std::max(a, b); }

// Where `values` peaks: the first NaN if there is one, else the first largest value.
inline std::size_t peak_index(const std::vector<double>& values) {
  std::size_t at = 0;
  for (std::size_t i = 1; i < values.size() && !std::isnan(values[at]); ++i) {
    if (std::isnan(values[i]) || values[i] > values[at]) at = i;
  }
  return at;
}

// The largest of one logged step's maxima, over all layers and heads.
inline double largest(const std::vector<double>& step) {
  double m = -std::numeric_limits<double>::infinity();
  for (const double v : step) m = nan_max(m, v);
  return m;
}

// The series plotted: per logged step, the largest maximum over all heads.
inline Series largest_logit_curve(const LogitHistory& h) {
  Series s{h.label, h.tokens, {}};
  s.y.reserve(h.maxima.size());
  for (const std::vector<double>& step : h.maxima) s.y.push_back(largest(step));
  return s;
}

// Per head, the largest maximum over the run ([layer * heads + head]).
inline std::vector<double> peak_per_head(const LogitHistory& h) {
  std::vector<double> peak(h.maxima.front().size(), -std::numeric_limits<double>::infinity());
  for (const std::vector<double>& step : h.maxima) {
    for (std::size_t i = 0; i < step.size(); ++i) peak[i] = nan_max(peak[i], step[i]);
  }
  return peak;
}

// `tau`, if given, is drawn as a flat line: the cap QK-clip would hold the curves to.
inline int logits(const std::vector<std::filesystem::path>& runs, const std::filesystem::path& plot, bool per_head,
                  std::optional<double> tau) {
  std::vector<Series> curves;
  std::printf("%-28s %10s %12s %6s %10s %13s %14s\n", "run", "peak", "at tokens", "head", "final", "clipped heads",
              "clipping steps");
  for (const std::filesystem::path& run : runs) {
    const LogitHistory h = logit_history(run);
    Series curve = largest_logit_curve(h);
    const std::size_t at = peak_index(curve.y);
    const auto head = static_cast<std::int64_t>(peak_index(h.maxima[at]));
    const std::string where = std::to_string(head / h.heads) + "." + std::to_string(head % h.heads);
    std::printf("%-28s %10.2f %12.0f %6s %10.2f %13lld %14lld\n", h.label.c_str(), curve.y[at], curve.x[at], where.c_str(),
                curve.y.back(), static_cast<long long>(h.clipped_heads), static_cast<long long>(h.clipping_steps));
    if (per_head) {
      const std::vector<double> peak = peak_per_head(h);
      for (std::int64_t l = 0; l < h.layers; ++l) {
        std::printf("  layer %-3lld peak per head:", static_cast<long long>(l));
        for (std::int64_t k = 0; k < h.heads; ++k) std::printf(" %8.2f", peak[static_cast<std::size_t>(l * h.heads + k)]);
        std::printf("\n");
      }
    }
    curves.push_back(std::move(curve));
  }
  if (!plot.empty()) {
    if (tau) {
      double first = curves.front().x.front(), last = curves.front().x.back();
      for (const Series& c : curves) first = std::min(first, c.x.front()), last = std::max(last, c.x.back());
      curves.push_back({"tau " + nlohmann::json(*tau).dump(), {first, last}, {*tau, *tau}});
    }
    plot_curves(plot, curves, {.title = "Largest attention logit over all heads", .x_label = "tokens",
                               .y_label = "max pre-softmax logit (scaled)"});
    std::printf("\nplot: %s\n", plot.c_str());
  }
  return 0;
}

}  // namespace moonlight::cli
