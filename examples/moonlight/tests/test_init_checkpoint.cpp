// `moonlight init`'s checkpoints: random weights written shard by shard that load with
// Weights::load, the same for any shard size, with HF's initialisation.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "fixtures.hpp"
#include "moonlight/config.hpp"
#include "moonlight/init_checkpoint.hpp"
#include "moonlight/model.hpp"
#include "moonlight/weights.hpp"

using moonlight::Config;
using moonlight::SaveDType;
using moonlight::Weights;
using moonlight::test::fixture;
using moonlight::test::ScratchDir;

namespace {

doctest::Contains contains(const std::string& s) { return doctest::Contains(s.c_str()); }

const Config& tiny() {
  static const Config c = Config::load(fixture("tiny_moonlight/config.json"));
  return c;
}

bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

}  // namespace

TEST_CASE("an init'ed checkpoint loads, is the same for any shard size, and has HF's initialisation") {
  ScratchDir dir("init");
  moonlight::init_checkpoint(dir.path / "single", tiny(), 7, {.dtype = SaveDType::f32});
  moonlight::init_checkpoint(dir.path / "sharded", tiny(), 7, {.dtype = SaveDType::f32, .max_shard_bytes = 300'000});
  CHECK(std::filesystem::exists(dir.path / "single/model.safetensors"));
  CHECK_FALSE(std::filesystem::exists(dir.path / "single/model.safetensors.index.json"));
  REQUIRE(std::filesystem::exists(dir.path / "sharded/model.safetensors.index.json"));
  const auto index = nlohmann::json::parse(std::ifstream(dir.path / "sharded/model.safetensors.index.json"));
  std::set<std::string> shards;
  for (const auto& [tensor, file] : index.at("weight_map").items()) shards.insert(file.get<std::string>());
  CHECK(shards.size() > 2);

  const Weights single = Weights::load(dir.path / "single", tiny());
  const moonlight::Model sharded = moonlight::Model::load(dir.path / "sharded");
  CHECK(bitwise_equal(single.data(), sharded.weights().data()));

  const double range = tiny().json.at("initializer_range").get<double>();
  for (const auto& t : single.tensors()) {
    const auto v = single.values(t.name);
    if (t.role == muon::Role::norm || t.role == muon::Role::bias) {
      const float expected = t.role == muon::Role::norm ? 1.0f : 0.0f;
      CHECK_MESSAGE(std::ranges::all_of(v, [&](float x) { return x == expected; }), t.name);
      continue;
    }
    double sum = 0.0, squares = 0.0;
    for (const float x : v) sum += x, squares += double{x} * x;
    const double mean = sum / static_cast<double>(v.size());
    const double std_dev = std::sqrt(squares / static_cast<double>(v.size()) - mean * mean);
    // Five standard errors: the smallest matrix (the router gate, 16 × 192) has 3072 values.
    const double n = static_cast<double>(v.size());
    CHECK_MESSAGE(std::abs(mean) < 5 * range / std::sqrt(n), t.name);
    CHECK_MESSAGE(std::abs(std_dev - range) < 5 * range / std::sqrt(2 * n), t.name);
  }

  moonlight::init_checkpoint(dir.path / "again", tiny(), 7, {.dtype = SaveDType::f32, .max_shard_bytes = 1'000'000});
  CHECK(bitwise_equal(single.data(), Weights::load(dir.path / "again", tiny()).data()));
  moonlight::init_checkpoint(dir.path / "other_seed", tiny(), 8, {.dtype = SaveDType::f32});
  CHECK_FALSE(bitwise_equal(single.data(), Weights::load(dir.path / "other_seed", tiny()).data()));
}

TEST_CASE("bf16 and f16 checkpoints hold the rounding of the fp32 values, and config.json says which") {
  ScratchDir dir("init_half");
  moonlight::init_checkpoint(dir.path / "f32", tiny(), 3, {.dtype = SaveDType::f32});
  moonlight::init_checkpoint(dir.path / "bf16", tiny(), 3, {.dtype = SaveDType::bf16, .max_shard_bytes = 200'000});
  moonlight::init_checkpoint(dir.path / "f16", tiny(), 3, {.dtype = SaveDType::f16});
  const Weights full = Weights::load(dir.path / "f32", tiny());
  const Weights bf16 = Weights::load(dir.path / "bf16", tiny());
  const Weights f16 = Weights::load(dir.path / "f16", tiny());
  std::size_t mismatched = 0;
  for (std::size_t i = 0; i < full.data().size(); ++i) {
    const float x = full.data()[i];
    mismatched += bf16.data()[i] != std::bit_cast<float>(std::uint32_t{moonlight::float_to_bf16(x)} << 16);
    mismatched += f16.data()[i] != muon::safetensors::detail::f16_to_float(moonlight::float_to_f16(x));
  }
  CHECK(mismatched == 0);
  const auto dtype_of = [&](const char* name) {
    return nlohmann::json::parse(std::ifstream(dir.path / name / "config.json")).at("torch_dtype").get<std::string>();
  };
  CHECK(dtype_of("bf16") == "bfloat16");
  CHECK(dtype_of("f16") == "float16");
  CHECK(dtype_of("f32") == "float32");
}

TEST_CASE("float_to_f16 rounds to nearest even, saturates to infinity past 65504, and keeps NaN") {
  using moonlight::float_to_f16;
  CHECK(float_to_f16(1.0f) == 0x3c00);
  CHECK(float_to_f16(-2.0f) == 0xc000);
  CHECK(float_to_f16(65504.0f) == 0x7bff);
  CHECK(float_to_f16(65519.0f) == 0x7bff);
  CHECK(float_to_f16(65520.0f) == 0x7c00);
  CHECK(float_to_f16(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(float_to_f16(0x1p-24f) == 0x0001);         // smallest subnormal
  CHECK(float_to_f16(0x1p-25f) == 0x0000);         // tie → even (0)
  CHECK(float_to_f16(0x1.8p-24f) == 0x0002);       // tie → even (2)
  CHECK(float_to_f16(0x1.ffcp-15f) == 0x0400);     // rounds up into the smallest normal
  CHECK(float_to_f16(1.0f + 0x1p-11f) == 0x3c00);  // tie → even
  CHECK(float_to_f16(1.0f + 0x1.8p-10f) == 0x3c02);  // tie → even (up)
  CHECK((float_to_f16(std::numeric_limits<float>::quiet_NaN()) & 0x7fff) > 0x7c00);
}

TEST_CASE("init refuses an output directory that is not empty, and fills an empty one") {
  ScratchDir dir("init_refuse");
  std::ofstream(dir.path / "keep.txt") << "mine";
  CHECK_THROWS_WITH_AS(moonlight::init_checkpoint(dir.path, tiny(), 1),
                       contains("output directory '" + dir.path.string() + "' exists and is not an empty directory"),
                       muon::InvalidArgument);
  CHECK(std::filesystem::exists(dir.path / "keep.txt"));
  std::filesystem::create_directory(dir.path / "empty");
  moonlight::init_checkpoint(dir.path / "empty", tiny(), 1);
  CHECK(std::filesystem::exists(dir.path / "empty/config.json"));
  // Nothing but the checkpoint is left beside it (the temporary directory was renamed).
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path), {}) == 2);
}

TEST_CASE("an initializer_range that is not a non-negative number is a ConfigError naming it") {
  ScratchDir dir("init_range");
  nlohmann::json j = tiny().json;
  j["initializer_range"] = "0.02";
  CHECK_THROWS_WITH_AS(moonlight::init_checkpoint(dir.path / "a", Config::from_json(j), 1),
                       contains("config field 'initializer_range'"), moonlight::ConfigError);
  j["initializer_range"] = -1.0;
  CHECK_THROWS_WITH_AS(moonlight::init_checkpoint(dir.path / "b", Config::from_json(j), 1),
                       contains("config field 'initializer_range': is -1"), moonlight::ConfigError);
  CHECK(std::filesystem::is_empty(dir.path));  // no checkpoint, no temporary directory left
}
