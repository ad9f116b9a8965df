// moonlight/plot.hpp: curves (losses, attention logits) as a PNG, drawn by PLplot (Debian's
// libplplot-dev with the cairo driver, device "pngcairo").
//
// One colour per series (then dashed, past seven), a legend, a grid, axes fitted to the finite
// data. The image is rendered to a temporary file beside the target and renamed over it, so a
// reader (an image viewer refreshing during training) never sees half a PNG.
//
//   moonlight::plot_curves("run/loss.png", series, {.title = "loss", .x_label = "tokens", .y_label = "nats"});
#pragma once

#include <plplot/plplot.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <system_error>
#include <unistd.h>
#include <vector>

#include "muon/error.hpp"

namespace moonlight {

struct Series {
  std::string label;
  std::vector<double> x, y;
};

struct PlotLabels {
  std::string title;
  std::string x_label;
  std::string y_label;
};

struct PlotSize {
  int width = 960;
  int height = 600;
};

namespace detail {

// Colour-blind-safe (Okabe–Ito) line colours, cmap0 indices 2.. (0 is the background, 1 the axes).
inline constexpr std::array<std::array<int, 3>, 7> kLineColours{
    {{0, 114, 178}, {213, 94, 0}, {0, 158, 115}, {204, 121, 167}, {230, 159, 0}, {86, 180, 233}, {0, 0, 0}}};

// Ends the PLplot stream this object made current, whatever happens in between.
struct PlotStream {
  PLINT previous = 0;
  PlotStream() {
    plgstrm(&previous);
    PLINT stream = 0;
    plmkstrm(&stream);  // a fresh stream per plot: no state left over from the last one
  }
  ~PlotStream() {
    plend1();
    plsstrm(previous);
  }
  PlotStream(const PlotStream&) = delete;
  PlotStream& operator=(const PlotStream&) = delete;
};

}  // namespace detail

inline void plot_curves(const std::filesystem::path& png, std::span<const Series> series, const PlotLabels& labels,
                        PlotSize size = {}) {
  if (series.empty()) throw muon::InvalidArgument("plot '" + png.string() + "': no series to plot");
  if (size.width < 64 || size.height < 64) throw muon::InvalidArgument("plot size must be at least 64x64 pixels");
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin;
  for (const Series& s : series) {
    if (s.x.size() != s.y.size()) {
      throw muon::InvalidArgument("plot series '" + s.label + "' has " + std::to_string(s.x.size()) + " x values and " +
                                  std::to_string(s.y.size()) + " y values");
    }
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]), ymax = std::max(ymax, s.y[i]);
    }
  }
  if (!(xmin <= xmax)) throw muon::InvalidArgument("plot '" + png.string() + "': no finite point to plot");
  // A single point, or a flat curve, still gets an axis of non-zero length.
  if (xmax == xmin) xmax = xmin + 1.0;
  const double pad = ymax > ymin ? 0.05 * (ymax - ymin) : 0.5;
  ymin -= pad, ymax += pad;

  const std::string temp = png.string() + ".tmp." + std::to_string(::getpid());
  // PLplot exits the process when it cannot open its output file: open it here first.
  if (!std::ofstream(temp, std::ios::binary)) {
    throw muon::FileError("cannot write plot '" + png.string() + "': cannot create '" + temp + "'");
  }
  {
    const detail::PlotStream stream;
    plsdev("pngcairo");
    plsfnam(temp.c_str());
    plspage(0.0, 0.0, size.width, size.height, 0, 0);
    plscolbg(255, 255, 255);
    plscol0(1, 0, 0, 0);
    for (std::size_t c = 0; c < detail::kLineColours.size(); ++c) {
      const auto& [r, g, b] = detail::kLineColours[c];
      plscol0(static_cast<PLINT>(c + 2), r, g, b);
    }
    plinit();
    plcol0(1);
    plenv(xmin, xmax, ymin, ymax, 0, 2);  // axis = 2: a grid at the major ticks
    pllab(labels.x_label.c_str(), labels.y_label.c_str(), labels.title.c_str());
    std::vector<PLINT> options, colours, styles;
    std::vector<PLFLT> widths;
    std::vector<const char*> texts;
    for (std::size_t k = 0; k < series.size(); ++k) {
      const PLINT colour = static_cast<PLINT>(2 + k % detail::kLineColours.size());
      // Past the seven colours, the next round of series is dashed (PLplot styles 2–8), so no two
      // series share both colour and style until 56.
      const PLINT style = static_cast<PLINT>(1 + (k / detail::kLineColours.size()) % 8);
      plcol0(colour);
      pllsty(style);
      plwidth(2.0);
      std::vector<PLFLT> x, y;
      for (std::size_t i = 0; i < series[k].x.size(); ++i) {
        if (std::isfinite(series[k].x[i]) && std::isfinite(series[k].y[i])) {
          x.push_back(series[k].x[i]);
          y.push_back(series[k].y[i]);
        }
      }
      if (!x.empty()) plline(static_cast<PLINT>(x.size()), x.data(), y.data());
      options.push_back(PL_LEGEND_LINE);
      colours.push_back(colour);
      styles.push_back(style);
      widths.push_back(2.0);
      texts.push_back(series[k].label.c_str());
    }
    plwidth(1.0);
    pllsty(1);
    PLFLT legend_width = 0.0, legend_height = 0.0;
    const auto n = static_cast<PLINT>(series.size());
    std::vector<PLINT> text_colours(series.size(), 1);
    pllegend(&legend_width, &legend_height, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX,
             PL_POSITION_TOP | PL_POSITION_RIGHT | PL_POSITION_INSIDE, 0.02, 0.02, 0.08, 0, 1, 1, 0, 0, n,
             options.data(), 1.0, 0.8, 2.0, 0.0, text_colours.data(), texts.data(), nullptr, nullptr, nullptr, nullptr,
             colours.data(), styles.data(), widths.data(), nullptr, nullptr, nullptr, nullptr);
  }
  std::error_code ec;
  if (std::filesystem::file_size(temp, ec) == 0 || ec) {
    std::filesystem::remove(temp, ec);
    throw muon::FileError("cannot write plot '" + png.string() + "': PLplot wrote nothing (is plplot-driver-cairo installed?)");
  }
  std::filesystem::rename(temp, png, ec);
  if (ec) {
    std::filesystem::remove(temp);
    throw muon::FileError("cannot write plot '" + png.string() + "': " + ec.message());
  }
}

}  // namespace moonlight
