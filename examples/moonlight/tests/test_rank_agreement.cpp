// What the ranks of `moonlight train` compare before the first collective, and the message of a
// difference (tools/rank_agreement.hpp). The exchange itself runs under mpirun in the CLI tests
// of CMakeLists.txt ("moonlight train under mpirun: ...").
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "muon/distributed/self.hpp"
#include "rank_agreement.hpp"

using moonlight::cli::describe_disagreement;
using moonlight::cli::run_facts;
using nlohmann::json;

namespace {

json run_config() {
  return {{"model", {{"hidden_size", 64}, {"rope_scaling", nullptr}}},
          {"training", {{"seed", 1}, {"steps", 4}, {"seq_len", 32}}},
          {"muon", {{"lr", 0.002}, {"ns", {{"steps", 5}}}}}};
}
const json corpus = {{"tokens", 1000}, {"crc32", 7}, {"seq_len", 32}};

}  // namespace

TEST_CASE("rank agreement: equal facts agree") {
  const auto facts = run_facts(false, nullptr, run_config(), corpus);
  CHECK_FALSE(describe_disagreement(facts, facts, 1).has_value());
  CHECK(facts.dump().starts_with(R"({"resume":false,"resumed_step":null,"model":)"));
}

TEST_CASE("rank agreement: the first differing field, with both values and the fix") {
  json other = run_config();
  other["training"]["seed"] = 2;
  CHECK(describe_disagreement(run_facts(false, nullptr, run_config(), corpus), run_facts(false, nullptr, other, corpus), 1) ==
        "ranks disagree on training.seed: rank 0 has 1, rank 1 has 2; pass the same --config and flags to every rank");

  other = run_config();
  other["muon"]["ns"]["steps"] = 6;
  CHECK(describe_disagreement(run_facts(false, nullptr, run_config(), corpus), run_facts(false, nullptr, other, corpus), 3) ==
        "ranks disagree on muon.ns.steps: rank 0 has 5, rank 3 has 6; pass the same --config and flags to every rank");
}

TEST_CASE("rank agreement: --resume is named before what it implies, the run config before the corpus") {
  json other = run_config();
  other["training"]["steps"] = 8;
  json other_corpus = corpus;
  other_corpus["crc32"] = 8;
  CHECK(describe_disagreement(run_facts(true, 4, run_config(), corpus), run_facts(false, nullptr, other, other_corpus), 1) ==
        "ranks disagree on resume: rank 0 has true, rank 1 has false; pass --resume to every rank or to none, with the "
        "same --out");
  CHECK(describe_disagreement(run_facts(true, 4, run_config(), corpus), run_facts(true, 2, other, other_corpus), 1)
            .value()
            .starts_with("ranks disagree on resumed_step: rank 0 has 4, rank 1 has 2;"));
  CHECK(describe_disagreement(run_facts(false, nullptr, run_config(), corpus), run_facts(false, nullptr, other, other_corpus), 1)
            .value()
            .starts_with("ranks disagree on training.steps:"));
  CHECK(describe_disagreement(run_facts(false, nullptr, run_config(), corpus),
                              run_facts(false, nullptr, run_config(), other_corpus), 1) ==
        "ranks disagree on corpus.crc32: rank 0 has 7, rank 1 has 8; give every rank the same --data files, "
        "--doc-separator and --tokenizer");
}

TEST_CASE("rank agreement: a field only one rank has") {
  json fewer = run_config();
  fewer["model"].erase("rope_scaling");
  CHECK(describe_disagreement(run_facts(false, nullptr, run_config(), corpus), run_facts(false, nullptr, fewer, corpus), 1) ==
        "ranks disagree on model.rope_scaling: rank 0 has null, rank 1 has nothing; pass the same --config and flags to "
        "every rank");
  CHECK(describe_disagreement(run_facts(false, nullptr, fewer, corpus), run_facts(false, nullptr, run_config(), corpus), 1) ==
        "ranks disagree on model.rope_scaling: rank 0 has nothing, rank 1 has null; pass the same --config and flags to "
        "every rank");
}

TEST_CASE("rank agreement: one rank agrees with itself without an exchange") {
  muon::distributed::SelfCommunicator self;
  CHECK_NOTHROW(moonlight::cli::agree_on_run(self, run_facts(false, nullptr, run_config(), corpus)));
}
