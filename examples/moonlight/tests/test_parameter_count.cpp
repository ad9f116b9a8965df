// Parameter counts from a config alone: the published Moonlight-16B-A3B figures, and agreement
// with the tensors the model is built from (tensor_layout).
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "fixtures.hpp"
#include "moonlight/config.hpp"
#include "moonlight/parameter_count.hpp"
#include "moonlight/weights.hpp"

using moonlight::Config;
using moonlight::count_parameters;
using moonlight::test::fixture;

namespace {

const std::filesystem::path configs = MOONLIGHT_CONFIG_DIR;

std::int64_t layout_sum(const Config& c) {
  std::int64_t sum = 0;
  for (const auto& t : moonlight::tensor_layout(c)) sum += muon::numel(t.shape);
  return sum;
}

}  // namespace

TEST_CASE("Moonlight-16B-A3B: 15.96B parameters, 15.29B without embeddings, 2.24B active") {
  const Config c = Config::load(configs / "moonlight-16b-a3b.json");
  const moonlight::ParameterCount n = count_parameters(c);
  CHECK(n.total == 15'960'110'208);
  CHECK(n.without_embeddings() == 15'289'021'568);
  CHECK(n.active() == 2'243'687'552);
  CHECK(n.active_with_head() == 2'579'231'872);
  CHECK(n.embeddings == 2 * 335'544'320);
  CHECK(n.tensors == 5'317);
  CHECK(n.total == layout_sum(c));
}

TEST_CASE("the committed Moonlight config is the reference fixture's config.json") {
  const auto read = [](const std::filesystem::path& p) { return nlohmann::json::parse(std::ifstream(p)); };
  CHECK(read(configs / "moonlight-16b-a3b.json") == read(fixture("moonlight_16b_a3b_instruct_config.json")));
}

TEST_CASE("the tiny config: the total is the sum over tensor_layout; tied embeddings count once") {
  const Config tiny = Config::load(fixture("tiny_moonlight/config.json"));
  const moonlight::ParameterCount n = count_parameters(tiny);
  CHECK(n.total == layout_sum(tiny));
  CHECK(n.tensors == static_cast<std::int64_t>(moonlight::tensor_layout(tiny).size()));
  const std::int64_t table = tiny.vocab_size * tiny.hidden_size;
  CHECK(n.embeddings == 2 * table);
  CHECK(n.head == table);

  nlohmann::json j = tiny.json;
  j["tie_word_embeddings"] = true;
  const moonlight::ParameterCount tied = count_parameters(Config::from_json(j));
  CHECK(tied.total == n.total - table);
  CHECK(tied.embeddings == table);
  CHECK(tied.active() == n.active());
  CHECK(tied.active_with_head() == n.active_with_head());
}

TEST_CASE("active counts num_experts_per_tok of the routed experts and everything else but the embeddings") {
  const Config tiny = Config::load(fixture("tiny_moonlight/config.json"));
  nlohmann::json j = tiny.json;
  j["num_experts_per_tok"] = tiny.n_routed_experts;  // every expert active: active = without embeddings
  CHECK(count_parameters(Config::from_json(j)).active() == count_parameters(tiny).without_embeddings());
}
