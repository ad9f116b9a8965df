// The loss plot (moonlight/plot.hpp) and the progress line (moonlight/progress.hpp).
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "moonlight/plot.hpp"
#include "moonlight/progress.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;

namespace {

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::uint32_t big_endian(const std::string& b, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
  return v;
}

const moonlight::PlotLabels kLabels{"loss", "tokens", "nats"};

}  // namespace

TEST_CASE("the plot is a PNG of the requested size, redrawn when the data changes") {
  muon::test::TempDir dir("plot");
  const fs::path png = dir.path() / "loss.png";
  std::vector<moonlight::Series> series{{"muon", {0, 100, 200}, {9.0, 6.5, 5.0}}, {"adamw", {0, 100, 200}, {9.0, 7.0, 5.6}}};
  moonlight::plot_curves(png, series, kLabels, {.width = 640, .height = 400});
  const std::string bytes = read_bytes(png);
  REQUIRE(bytes.size() > 24);
  CHECK(bytes.substr(0, 8) == "\x89PNG\r\n\x1a\n");
  CHECK(bytes.substr(12, 4) == "IHDR");
  CHECK(big_endian(bytes, 16) == 640);
  CHECK(big_endian(bytes, 20) == 400);

  series[1].y[2] = 4.0;  // a second call in the same process, on new data
  moonlight::plot_curves(png, series, kLabels, {.width = 640, .height = 400});
  CHECK(read_bytes(png) != bytes);
  for (const fs::directory_entry& e : fs::directory_iterator(dir.path())) CHECK(e.path().filename() == "loss.png");
}

TEST_CASE("bad plot input is a typed error that leaves nothing behind") {
  muon::test::TempDir dir("plot_bad");
  const std::vector<moonlight::Series> ok{{"a", {1, 2}, {3, 4}}};
  const std::string unwritable = "cannot write plot '" + (dir.path() / "missing" / "p.png").string() + "'";
  CHECK_THROWS_WITH_AS(moonlight::plot_curves(dir.path() / "missing" / "p.png", ok, kLabels),
                       doctest::Contains(unwritable.c_str()), muon::FileError);
  CHECK_THROWS_AS(moonlight::plot_curves(dir.path() / "p.png", std::vector<moonlight::Series>{}, kLabels),
                  muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(moonlight::plot_curves(dir.path() / "p.png", std::vector<moonlight::Series>{{"b", {1, 2}, {3}}}, kLabels),
                       doctest::Contains("series 'b' has 2 x values and 1 y values"), muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(moonlight::plot_curves(dir.path() / "p.png", std::vector<moonlight::Series>{{"n", {1}, {NAN}}}, kLabels),
                       doctest::Contains("no finite point"), muon::InvalidArgument);
  CHECK(fs::is_empty(dir.path()));
}

TEST_CASE("the progress line: bar, percentage, units and ETA") {
  const moonlight::ProgressState s{.step = 120, .total_steps = 1000, .loss = 4.2134, .tokens_per_s = 18300,
                                   .lr = 4.2e-4, .elapsed_s = 24.0};
  // 24 s for 120 steps → 0.2 s per step → 880 steps left = 176 s.
  CHECK(moonlight::progress_line(s, 10) ==
        "step  120/1000 [=>        ]  12% | loss 4.213 | 18.3k tok/s | lr 4.20e-04 | ETA 2m56s");
  moonlight::ProgressState done = s;
  done.step = 1000;
  CHECK(moonlight::progress_line(done, 4) == "step 1000/1000 [====] 100% | loss 4.213 | 18.3k tok/s | lr 4.20e-04 | ETA 0s");
  moonlight::ProgressState resumed = s;
  resumed.first_step = 100;  // 24 s for 20 steps of this process → 1.2 s per step
  CHECK(moonlight::progress_line(resumed, 4).ends_with("ETA 17m36s"));
  moonlight::ProgressState start = s;
  start.step = 0;
  CHECK(moonlight::progress_line(start, 4).ends_with("ETA ?"));

  CHECK(moonlight::human_count(950) == "950");
  CHECK(moonlight::human_count(1.25e6) == "1.2M");
  CHECK(moonlight::human_duration(45) == "45s");
  CHECK(moonlight::human_duration(3 * 3600 + 4 * 60 + 5) == "3h04m");
}
