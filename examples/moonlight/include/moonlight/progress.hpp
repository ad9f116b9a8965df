// moonlight/progress.hpp: the training progress line.
//
//   step  120/1000 [===>                ]  12% | loss 4.213 | 18.3k tok/s | lr 4.20e-04 | ETA 3m12s
//
// With the step's largest attention logit, "| max logit 31.4" goes before the ETA; with QK-clip
// on, "| max logit 131.4, 3 clipped" (heads rescaled after the step).
//
// On a terminal the line is redrawn in place (carriage return); into a file or a pipe a plain
// line goes out every `plain_every` steps and at the last, so logs stay readable.
//
//   moonlight::ProgressBar bar(stderr, 10);
//   bar.update({.step = 120, .total_steps = 1000, .loss = 4.213, .tokens_per_s = 18300, .lr = 4.2e-4, .elapsed_s = 25});
//   bar.finish();
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

namespace moonlight {

struct ProgressState {
  std::int64_t step = 0;
  std::int64_t total_steps = 0;
  double loss = 0.0;
  double tokens_per_s = 0.0;
  double lr = 0.0;
  double elapsed_s = 0.0;  // since this process started training (the ETA extrapolates it)
  std::int64_t first_step = 0;  // the step this process started from (non-zero after a resume)
  std::optional<double> max_logit{};        // over layers and heads, of the step
  std::optional<std::int64_t> qk_clipped{};  // heads QK-clip rescaled after the step
};

// 950, 18.3k, 1.2M.
[[nodiscard]] inline std::string human_count(double v) {
  char text[32];
  if (v < 1e3) std::snprintf(text, sizeof text, "%.0f", v);
  else if (v < 1e6) std::snprintf(text, sizeof text, "%.1fk", v / 1e3);
  else std::snprintf(text, sizeof text, "%.1fM", v / 1e6);
  return text;
}

// 45s, 3m12s, 1h04m.
[[nodiscard]] inline std::string human_duration(double seconds) {
  const auto s = static_cast<std::int64_t>(std::llround(std::max(0.0, seconds)));
  char text[32];
  if (s < 60) std::snprintf(text, sizeof text, "%llds", static_cast<long long>(s));
  else if (s < 3600) std::snprintf(text, sizeof text, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else std::snprintf(text, sizeof text, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  return text;
}

[[nodiscard]] inline std::string progress_line(const ProgressState& s, int bar_width = 20) {
  const double done = s.total_steps > 0 ? std::clamp(static_cast<double>(s.step) / static_cast<double>(s.total_steps), 0.0, 1.0) : 0.0;
  const auto filled = static_cast<int>(done * bar_width);
  std::string bar(static_cast<std::size_t>(filled), '=');
  if (filled < bar_width) bar += '>';
  bar.resize(static_cast<std::size_t>(bar_width), ' ');
  const std::int64_t this_run = s.step - s.first_step;
  const std::string eta =
      this_run > 0 ? human_duration(s.elapsed_s / static_cast<double>(this_run) * static_cast<double>(s.total_steps - s.step)) : "?";
  char logit[64] = "";
  if (s.max_logit && s.qk_clipped)
    std::snprintf(logit, sizeof logit, " | max logit %.1f, %lld clipped", *s.max_logit, static_cast<long long>(*s.qk_clipped));
  else if (s.max_logit)
    std::snprintf(logit, sizeof logit, " | max logit %.1f", *s.max_logit);
  char text[320];
  std::snprintf(text, sizeof text, "step %*lld/%lld [%s] %3d%% | loss %.3f | %s tok/s | lr %.2e%s | ETA %s",
                static_cast<int>(std::to_string(s.total_steps).size()), static_cast<long long>(s.step),
                static_cast<long long>(s.total_steps), bar.c_str(), static_cast<int>(done * 100.0), s.loss,
                human_count(s.tokens_per_s).c_str(), s.lr, logit, eta.c_str());
  return text;
}

class ProgressBar {
 public:
  ProgressBar(std::FILE* out, std::int64_t plain_every)
      : out_(out), terminal_(::isatty(::fileno(out)) != 0), plain_every_(std::max<std::int64_t>(1, plain_every)) {}

  void update(const ProgressState& s) {
    if (terminal_) {
      std::fprintf(out_, "\r%s\033[K", progress_line(s).c_str());  // \033[K clears a longer old line
      open_line_ = true;
    } else if (s.step % plain_every_ == 0 || s.step == s.total_steps) {
      std::fprintf(out_, "%s\n", progress_line(s).c_str());
    }
    std::fflush(out_);
  }

  // A message on its own line, without breaking the bar.
  void note(const std::string& text) {
    finish();
    std::fprintf(out_, "%s\n", text.c_str());
    std::fflush(out_);
  }

  void finish() {
    if (open_line_) std::fputc('\n', out_);
    open_line_ = false;
  }

 private:
  std::FILE* out_;
  bool terminal_;
  std::int64_t plain_every_;
  bool open_line_ = false;
};

}  // namespace moonlight
