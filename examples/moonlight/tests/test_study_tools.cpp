// The study's readers of run directories (tools/): `moonlight compare`'s tokens to a target loss
// and `moonlight logits`' attention-logit history (docs/moonlight-study.md).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "compare_command.hpp"
#include "logits_command.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using moonlight::Series;

namespace {

fs::path write_run(const fs::path& root, const std::string& name, const std::vector<std::string>& lines) {
  const fs::path run = root / name;
  fs::create_directories(run);
  std::ofstream out(run / "metrics.jsonl");
  for (const std::string& l : lines) out << l << "\n";
  return run;
}

}  // namespace

TEST_CASE("compare: tokens to a target, interpolated between evaluations") {
  const Series curve{"run", {0, 100, 200, 300}, {6.0, 5.0, 4.0, 3.5}};
  CHECK(*moonlight::cli::tokens_to_reach(curve, 5.0) == doctest::Approx(100.0));  // reached exactly at 100
  CHECK(*moonlight::cli::tokens_to_reach(curve, 4.25) == doctest::Approx(175.0));  // 3/4 of the way from 5.0 to 4.0
  CHECK(*moonlight::cli::tokens_to_reach(curve, 7.0) == doctest::Approx(0.0));     // already below at the first point
  CHECK_FALSE(moonlight::cli::tokens_to_reach(curve, 3.0).has_value());
  // The first crossing counts, not a later one after the curve rose again.
  const Series bumpy{"run", {0, 100, 200, 300}, {6.0, 4.0, 6.0, 4.0}};
  CHECK(*moonlight::cli::tokens_to_reach(bumpy, 5.0) == doctest::Approx(50.0));
}

TEST_CASE("logits: the history, its peaks and clip counts from metrics.jsonl") {
  muon::test::TempDir dir("study_tools");
  // Two layers of two heads; step 2 lacks max_logits (an older line), step 4 has a diverged head.
  const fs::path run = write_run(dir.path(), "muon-qkclip",
                                 {R"({"step":1,"tokens":100,"loss":9,"max_logits":[[1.0,2.0],[3.0,0.5]]})",
                                  R"({"step":2,"tokens":200,"loss":8})",
                                  R"({"step":3,"tokens":300,"loss":7,"max_logits":[[7.0,2.5],[4.0,0.25]],"qk_clipped":2})",
                                  R"({"step":4,"tokens":400,"loss":6,"max_logits":[[5.0,null],[6.0,1.0]],"qk_clipped":0})",
                                  R"({"step":5,"tokens":500,"loss":5,"max_logits":[[5.0,2.0],[6.0,1.0]],"qk_clipped":1})"});
  const moonlight::cli::LogitHistory h = moonlight::cli::logit_history(run);
  CHECK(h.label == "muon-qkclip");
  CHECK(h.layers == 2);
  CHECK(h.heads == 2);
  CHECK(h.tokens == std::vector<double>{100, 300, 400, 500});
  CHECK(h.clipped_heads == 3);
  CHECK(h.clipping_steps == 2);

  const Series curve = moonlight::cli::largest_logit_curve(h);
  CHECK(curve.y[0] == 3.0);
  CHECK(curve.y[1] == 7.0);
  CHECK(std::isnan(curve.y[2]));  // a NaN head is not hidden by the larger finite ones
  CHECK(curve.y[3] == 6.0);
  CHECK(moonlight::cli::peak_index(curve.y) == 2);
  CHECK(moonlight::cli::peak_index({1.0, 7.0, 7.0, 2.0}) == 1);

  const std::vector<double> peak = moonlight::cli::peak_per_head(h);
  CHECK(peak[0] == 7.0);
  CHECK(std::isnan(peak[1]));
  CHECK(peak[2] == 6.0);
  CHECK(peak[3] == 1.0);
}

TEST_CASE("logits: the subcommand plots every run and the threshold") {
  muon::test::TempDir dir("study_tools_plot");
  const fs::path a = write_run(dir.path(), "a", {R"({"step":1,"tokens":100,"max_logits":[[1.0]]})",
                                                 R"({"step":2,"tokens":200,"max_logits":[[3.0]]})"});
  const fs::path b = write_run(dir.path(), "b", {R"({"step":1,"tokens":100,"max_logits":[[2.0]],"qk_clipped":1})"});
  CHECK(moonlight::cli::logits({a, b}, dir.path() / "logits.png", true, 2.5) == 0);
  CHECK(fs::file_size(dir.path() / "logits.png") > 0);
}

TEST_CASE("logits: runs it cannot read are typed errors naming the run") {
  muon::test::TempDir dir("study_tools_bad");
  CHECK_THROWS_WITH_AS(moonlight::cli::logit_history(dir.path() / "absent"), doctest::Contains("absent' has no metrics.jsonl"),
                       muon::FileError);
  const fs::path old = write_run(dir.path(), "old", {R"({"step":1,"tokens":100,"loss":9})"});
  CHECK_THROWS_WITH_AS(moonlight::cli::logit_history(old), doctest::Contains("old' logged no max_logits"),
                       muon::InvalidArgument);
  const fs::path ragged = write_run(dir.path(), "ragged",
                                    {R"({"step":1,"tokens":100,"max_logits":[[1.0,2.0],[3.0,0.5]]})",
                                     R"({"step":2,"tokens":200,"max_logits":[[1.0,2.0]]})"});
  CHECK_THROWS_WITH_AS(moonlight::cli::logit_history(ragged),
                       doctest::Contains("step 2 logs max_logits of another shape than the run's first step (2 layers of 2 heads)"),
                       muon::InvalidArgument);
  const fs::path heads = write_run(dir.path(), "heads",
                                   {R"({"step":1,"tokens":100,"max_logits":[[1.0,2.0],[3.0,0.5]]})",
                                    R"({"step":2,"tokens":200,"max_logits":[[1.0,2.0],[3.0]]})"});
  CHECK_THROWS_WITH_AS(moonlight::cli::logit_history(heads), doctest::Contains("step 2 logs max_logits of another shape"),
                       muon::InvalidArgument);
  const fs::path flat = write_run(dir.path(), "flat", {R"({"step":7,"tokens":100,"max_logits":[1.0,2.0]})"});
  CHECK_THROWS_WITH_AS(moonlight::cli::logit_history(flat), doctest::Contains("step 7 logs max_logits that are not a [layer][head] array"),
                       muon::InvalidArgument);
}
