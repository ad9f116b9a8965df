// Checkpoint I/O: HF safetensors single-file and sharded, bf16 widening, exact round trips, and a
// clear error for every kind of bad checkpoint.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>

#include "fixtures.hpp"
#include "moonlight/config.hpp"
#include "moonlight/weights.hpp"

namespace st = muon::safetensors;
using moonlight::Config;
using moonlight::Weights;
using moonlight::test::fixture;
using moonlight::test::ScratchDir;

namespace {

doctest::Contains contains(const std::string& s) { return doctest::Contains(s.c_str()); }

bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

// Writes `w`'s tensors as dir/model.safetensors in F32 after `edit` may change the list.
template <class Edit>
void write_edited(const std::filesystem::path& dir, const Weights& w, Edit edit) {
  std::vector<st::TensorToWrite> tensors;
  for (const auto& t : w.tensors()) tensors.push_back(st::tensor_f32(t.name, t.shape, w.values(t.name)));
  edit(tensors);
  st::write(dir / "model.safetensors", tensors);
}

struct Tiny {
  Config config = Config::load(fixture("tiny_moonlight/config.json"));
  Weights weights = Weights::load(fixture("tiny_moonlight"), config);
};

}  // namespace

TEST_CASE("a transformers checkpoint loads every tensor as written") {
  const Tiny tiny;
  const st::File file = st::File::open(fixture("tiny_moonlight/model.safetensors"));
  CHECK(file.names().size() == tiny.weights.tensors().size());
  for (const auto& t : tiny.weights.tensors()) {
    const std::vector<float> expected = file.to_float(t.name);
    CHECK_MESSAGE(bitwise_equal(tiny.weights.values(t.name), expected), t.name);
  }
}

TEST_CASE("a bf16 checkpoint sharded with an index loads as the bf16 rounding of the fp32 one") {
  // transformers wrote the same model with .to(torch.bfloat16) in 3 shards; float_to_bf16 must
  // round exactly as torch does, and loading must widen exactly.
  const Tiny tiny;
  const Weights bf16 = Weights::load(fixture("tiny_moonlight_bf16_sharded"), tiny.config);
  std::size_t compared = 0, mismatched = 0;
  for (const auto& t : tiny.weights.tensors()) {
    const auto full = tiny.weights.values(t.name), half = bf16.values(t.name);
    for (std::size_t i = 0; i < full.size(); ++i, ++compared) {
      const float rounded = std::bit_cast<float>(static_cast<std::uint32_t>(moonlight::float_to_bf16(full[i])) << 16);
      mismatched += std::bit_cast<std::uint32_t>(half[i]) != std::bit_cast<std::uint32_t>(rounded);
    }
  }
  CHECK(mismatched == 0);
  CHECK(compared == 170528 + 2 * 8);  // transformers' parameter count + the two router bias buffers
}

TEST_CASE("save then load is bit-exact, single-file and sharded") {
  const Tiny tiny;
  ScratchDir dir("roundtrip");
  for (const std::uint64_t shard : {std::uint64_t{1} << 40, std::uint64_t{100'000}}) {
    const auto out = dir.path / std::to_string(shard);
    tiny.weights.save(out, tiny.config, {.dtype = moonlight::SaveDType::f32, .max_shard_bytes = shard});
    const bool sharded = shard < (std::uint64_t{1} << 40);
    CHECK(std::filesystem::exists(out / "model.safetensors.index.json") == sharded);
    CHECK(std::filesystem::exists(out / "model.safetensors") == !sharded);
    const Config config = Config::load(out / "config.json");
    CHECK(config.json.at("torch_dtype") == "float32");
    CHECK(config.json.at("dtype") == "float32");
    const Weights back = Weights::load(out, config);
    CHECK(bitwise_equal(back.data(), tiny.weights.data()));
  }
  // bf16 export: what loads back is the bf16 rounding of each value.
  tiny.weights.save(dir.path / "bf16", tiny.config, {.dtype = moonlight::SaveDType::bf16});
  const Weights bf16 = Weights::load(dir.path / "bf16", tiny.config);
  const Weights reference = Weights::load(fixture("tiny_moonlight_bf16_sharded"), tiny.config);
  CHECK(bitwise_equal(bf16.data(), reference.data()));
}

TEST_CASE("float_to_bf16 rounds to nearest even and keeps NaN a NaN") {
  CHECK(moonlight::float_to_bf16(1.0f) == 0x3f80);
  CHECK(moonlight::float_to_bf16(std::bit_cast<float>(0x3f808000u)) == 0x3f80);  // tie → even
  CHECK(moonlight::float_to_bf16(std::bit_cast<float>(0x3f818000u)) == 0x3f82);  // tie → even (up)
  CHECK(moonlight::float_to_bf16(std::bit_cast<float>(0x3f808001u)) == 0x3f81);
  const std::uint16_t nan = moonlight::float_to_bf16(std::numeric_limits<float>::quiet_NaN());
  CHECK(std::isnan(std::bit_cast<float>(static_cast<std::uint32_t>(nan) << 16)));
}

TEST_CASE("bad checkpoints are refused with an error naming the tensor and the file") {
  const Tiny tiny;
  ScratchDir dir("bad");
  const std::string victim = "model.layers.1.mlp.experts.3.up_proj.weight";
  const auto load = [&] { return Weights::load(dir.path, tiny.config); };

  SUBCASE("missing tensor") {
    write_edited(dir.path, tiny.weights, [&](auto& ts) { std::erase_if(ts, [&](const auto& t) { return t.name == victim; }); });
    CHECK_THROWS_WITH_AS(load(), contains("tensor '" + victim + "' is missing"), muon::FileError);
  }
  SUBCASE("extra tensor") {
    const std::vector<float> junk(4, 0.0f);
    write_edited(dir.path, tiny.weights, [&](auto& ts) { ts.push_back(st::tensor_f32("model.layers.7.mlp.gate.weight", {2, 2}, junk)); });
    CHECK_THROWS_WITH_AS(load(), contains("unexpected tensor 'model.layers.7.mlp.gate.weight' in '" + (dir.path / "model.safetensors").string()),
                         muon::FileError);
  }
  SUBCASE("mis-shaped tensor (transposed)") {
    write_edited(dir.path, tiny.weights, [&](auto& ts) {
      for (auto& t : ts) if (t.name == victim) std::swap(t.shape[0], t.shape[1]);
    });
    CHECK_THROWS_WITH_AS(load(), contains("tensor '" + victim + "' in '" + (dir.path / "model.safetensors").string() + "' has shape [64, 16]; the config implies [16, 64]"),
                         muon::FileError);
  }
  SUBCASE("integer dtype") {
    const std::vector<std::int32_t> ints(16 * 64, 0);
    write_edited(dir.path, tiny.weights, [&](auto& ts) {
      for (auto& t : ts) if (t.name == victim) t = {victim, st::DType::I32, {16, 64}, std::as_bytes(std::span(ints))};
    });
    CHECK_THROWS_WITH_AS(load(), contains("tensor '" + victim + "'"), muon::FileError);
  }
  SUBCASE("truncated file") {
    std::filesystem::copy_file(fixture("tiny_moonlight/model.safetensors"), dir.path / "model.safetensors");
    std::filesystem::resize_file(dir.path / "model.safetensors", std::filesystem::file_size(dir.path / "model.safetensors") - 100);
    CHECK_THROWS_WITH_AS(load(), contains("truncated"), muon::FileError);
    CHECK_THROWS_WITH_AS(load(), contains((dir.path / "model.safetensors").string()), muon::FileError);
  }
  SUBCASE("no checkpoint at all") {
    CHECK_THROWS_WITH_AS(load(), contains("has neither model.safetensors nor model.safetensors.index.json"), muon::FileError);
  }
  SUBCASE("sharded: a shard missing, a tensor not where the index says, a tensor the index omits") {
    tiny.weights.save(dir.path, tiny.config, {.max_shard_bytes = 300'000});
    const auto index_path = dir.path / "model.safetensors.index.json";
    nlohmann::json index = nlohmann::json::parse(std::ifstream(index_path));
    const std::string shard = index["weight_map"][victim];
    SUBCASE("shard file deleted") {
      std::filesystem::remove(dir.path / shard);
      CHECK_THROWS_WITH_AS(load(), contains(shard), muon::FileError);
    }
    SUBCASE("index points the tensor at another shard") {
      std::string other;
      for (const auto& [name, file] : index["weight_map"].items()) {
        if (file != shard) other = file;
      }
      REQUIRE_FALSE(other.empty());
      index["weight_map"][victim] = other;
      std::ofstream(index_path) << index.dump();
      CHECK_THROWS_WITH_AS(load(), contains("tensor '" + victim + "'"), muon::FileError);
    }
    SUBCASE("index omits a tensor that a shard holds") {
      index["weight_map"].erase(victim);
      std::ofstream(index_path) << index.dump();
      CHECK_THROWS_WITH_AS(load(), contains("unexpected tensor '" + victim + "'"), muon::FileError);
    }
    SUBCASE("index names a path outside the directory") {
      index["weight_map"][victim] = "../" + shard;
      std::ofstream(index_path) << index.dump();
      CHECK_THROWS_WITH_AS(load(), contains("not a file name in the same directory"), muon::FileError);
    }
  }
}

TEST_CASE("the parameter table covers every tensor with its role and a gradient view") {
  Tiny tiny;
  std::vector<float> grads(tiny.weights.data().size());
  const std::vector<muon::Parameter> table = tiny.weights.parameter_table(grads);
  REQUIRE(table.size() == tiny.weights.tensors().size());
  for (const auto& p : table) {
    CHECK(p.value.data == tiny.weights.values(p.name).data());
    CHECK(p.grad.data - grads.data() == p.value.data - tiny.weights.data().data());
  }
  CHECK(table.front().role == muon::Role::embedding);
  CHECK(table.back().role == muon::Role::head);
  CHECK(muon::route(table[1]) == muon::Rule::adamw);  // input_layernorm
  CHECK(muon::route(table[2]) == muon::Rule::muon);   // q_proj
  std::vector<float> wrong(3);
  CHECK_THROWS_AS((void)tiny.weights.parameter_table(wrong), muon::ShapeMismatch);
}

TEST_CASE("a config whose tensors sum beyond 2^62 floats is refused before the buffer is sized (issue 14)") {
  // Every field is within Config's bounds and every tensor's count fits int64 (a shared expert
  // is 2^16 · 2^20 × 2^20 = 2^56), but 4096 layers of them overflowed the flat buffer's offset,
  // which then sized a small buffer that the views ran past.
  nlohmann::json j = Config::load(fixture("tiny_moonlight/config.json")).json;
  j["hidden_size"] = 1 << 20;
  j["moe_intermediate_size"] = 1 << 20;
  j["n_shared_experts"] = 1 << 16;
  j["num_hidden_layers"] = 4096;
  const Config c = Config::from_json(j);
  CHECK_THROWS_WITH_AS(Weights{c}, contains("more than 2^62 parameters"), muon::InvalidArgument);
}

TEST_CASE("a parameter whose element count overflows int64 is refused by validate_table (issue 14)") {
  // [2^32, 2^32]: rows × cols wrapped to 0 and the Muon stepper divided by it.
  float value = 0.0f, grad = 0.0f;
  const muon::Shape shape{std::int64_t{1} << 32, std::int64_t{1} << 32};
  const std::vector<muon::Parameter> table{{"huge", muon::Role::matrix, {&value, shape}, {&grad, shape}}};
  CHECK_THROWS_WITH_AS(muon::validate_table(table), contains("parameter 'huge' has shape [4294967296, 4294967296]"),
                       muon::InvalidArgument);
  // Each fits, but not the two together.
  const muon::Shape half{std::int64_t{1} << 31, std::int64_t{1} << 31};
  const std::vector<muon::Parameter> two{{"a", muon::Role::matrix, {&value, half}, {&grad, half}},
                                         {"b", muon::Role::matrix, {&value, half}, {&grad, half}}};
  CHECK_THROWS_WITH_AS(muon::validate_table(two), contains("table's element count exceeds"), muon::InvalidArgument);
}
