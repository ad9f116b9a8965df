// One field table per options struct (muon/schema.hpp): every field of every options struct set
// away from its default survives each place options travel, and validation names the field.
#include <doctest/doctest.h>

#include <filesystem>
#include <muon/backends/eigen.hpp>
#include <muon/distributed/self.hpp>
#include <muon/distributed/zero1.hpp>
#include <muon/muon.hpp>
#include <muon/options_json.hpp>
#include <muon/state_file.hpp>
#include <string>
#include <vector>

#include "custom_options.hpp"
#include "hybrid_model.hpp"
#include "temp_dir.hpp"

namespace {

using muon::test::custom_options;
using muon::test::differing_fields;
using Model = muon::test::HybridModel;

}  // namespace

TEST_CASE("the custom options set every field of every options struct away from its default") {
  CHECK(muon::test::fields_at_default(custom_options()).empty());
  muon::validate(custom_options());
}

TEST_CASE("options round-trip through JSON, every field") {
  const muon::Options o = custom_options();
  CHECK(differing_fields(muon::options_from_json(muon::to_json(o)), o).empty());
  // A run config gives some fields; the others keep their defaults.
  const auto partial = muon::from_json<muon::Options>({{"muon", {{"ns", {{"steps", 7}}}}}}, "Options",
                                                      muon::MissingFields::keep);
  CHECK(partial.muon.ns.steps == 7);
  CHECK(differing_fields(partial, muon::Options{}) == std::vector<std::string>{"Options.muon.ns.steps"});
}

TEST_CASE("reading options names the field at fault and what it expected") {
  nlohmann::json j = muon::to_json(custom_options());
  const auto fails_with = [](const nlohmann::json& bad, const char* text) {
    CHECK_THROWS_WITH_AS(muon::options_from_json(bad), doctest::Contains(text), muon::InvalidArgument);
  };
  auto missing = j;
  missing["muon"]["ns"].erase("gram_restart");
  fails_with(missing, "Options.muon.ns.gram_restart is missing");
  auto unknown = j;
  unknown["muon"]["nesterv"] = true;
  fails_with(unknown, "Options.muon.nesterv is not an option");
  auto mistyped = j;
  mistyped["muon"]["ns"]["steps"] = "five";
  fails_with(mistyped, "Options.muon.ns.steps is \"five\", expected an integer");
  auto bad_enum = j;
  bad_enum["muon"]["ns"]["method"] = "fast";
  fails_with(bad_enum, "expected \"automatic\", \"plain\" or \"gram\"");
  auto bad_kind = j;
  bad_kind["schedule"]["kind"] = "linear";
  fails_with(bad_kind, "Options.schedule.kind is \"linear\"");
  auto out_of_range = j;
  out_of_range["adamw"]["beta2"] = 1.0;
  fails_with(out_of_range, "Options.adamw.beta2 must be finite and in [0, 1), got 1");
  auto normuon_beta2 = j;
  normuon_beta2["muon"]["normuon"]["beta2"] = -0.5;
  fails_with(normuon_beta2, "Options.muon.normuon.beta2 must be finite and in [0, 1), got -0.5");
  auto normuon_eps = j;
  normuon_eps["muon"]["normuon"]["eps"] = 0.0;
  fails_with(normuon_eps, "Options.muon.normuon.eps must be finite and > 0, got 0");
}

TEST_CASE("options round-trip through the state file, every field") {
  const muon::test::TempDir dir("muon_options_schema");
  const auto path = dir / "state.safetensors";
  Model a, b;
  muon::Optimizer<muon::EigenBackend> saved(a.table(), custom_options());
  (void)saved.step();
  muon::save_state(saved, path);
  muon::Optimizer<muon::EigenBackend> loaded(b.table(), muon::test::normuon_on());
  muon::load_state(loaded, path);
  CHECK(differing_fields(loaded.options(), custom_options()).empty());
}

TEST_CASE("options round-trip through ZeRO-1's agreement, its file and its load, every field") {
  const muon::test::TempDir dir("muon_options_schema");
  const auto path = dir / "zero.safetensors";
  using Zero = muon::distributed::ZeroOptimizer<muon::EigenBackend, muon::distributed::SelfCommunicator>;
  Model a, b;
  Zero agreed(a.table(), custom_options(), {});
  CHECK(differing_fields(agreed.options(), custom_options()).empty());
  (void)agreed.step();
  agreed.save(path);
  Zero loaded(b.table(), muon::test::normuon_on(), {});
  loaded.load(path);
  CHECK(differing_fields(loaded.options(), custom_options()).empty());
  CHECK(loaded.step_count() == 1);
}
