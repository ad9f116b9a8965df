// Inference from a memory-mapped checkpoint in its stored dtype (Model::map): its logits against
// the widened fp32 path on the same checkpoint, and its resident memory against the file's size.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "fixtures.hpp"
#include "moonlight/init_checkpoint.hpp"
#include "moonlight/model.hpp"
#include "moonlight/weights.hpp"
#include "temp_dir.hpp"

using moonlight::AttentionPath;
using moonlight::Config;
using moonlight::KvCache;
using moonlight::Matrix;
using moonlight::Model;
using moonlight::test::fixture;

namespace {

// max |Δlogit| / max |logit| of `reference`, over all positions.
double relative_error(const Matrix& ours, const Matrix& reference) {
  REQUIRE(ours.rows() == reference.rows());
  REQUIRE(ours.cols() == reference.cols());
  return (ours - reference).cwiseAbs().maxCoeff() / reference.cwiseAbs().maxCoeff();
}

std::vector<std::int32_t> some_ids(const Config& c, int n) {
  std::vector<std::int32_t> ids;
  for (int t = 0; t < n; ++t) ids.push_back(static_cast<std::int32_t>((t * 131 + 7) % c.vocab_size));
  return ids;
}

}  // namespace

TEST_CASE("a mapped BF16 or F16 checkpoint gives the widened fp32 path's logits within 1e-5, on both attention paths") {
  for (const auto& model_and_dtype : {std::pair{"tiny_moonlight", moonlight::SaveDType::bf16},
                                     std::pair{"tiny_qlora_groups", moonlight::SaveDType::bf16},
                                     std::pair{"tiny_moonlight", moonlight::SaveDType::f16}}) {
    const char* name = model_and_dtype.first;
    const moonlight::SaveDType dtype = model_and_dtype.second;
    CAPTURE(name);
    const muon::test::TempDir dir("moonlight_half");
    const Config config = Config::load(fixture(name) / "config.json");
    moonlight::Weights::load(fixture(name), config).save(dir.path(), config, {.dtype = dtype});
    const Model mapped = Model::map(dir.path());
    const Model widened = Model::load(dir.path());  // the same bf16 values, widened to fp32 once
    const std::vector<std::int32_t> ids = some_ids(config, 9);
    for (const AttentionPath path : {AttentionPath::decompressed, AttentionPath::absorbed}) {
      KvCache a(config), b(config);
      // The prompt at once (tile-widened GEMMs), then two tokens one at a time (widening GEMVs).
      const std::span<const std::int32_t> all(ids);
      const double prompt = relative_error(mapped.forward(all.first(7), a, moonlight::LogitsFor::all_tokens, path),
                                           widened.forward(all.first(7), b, moonlight::LogitsFor::all_tokens, path));
      // The same products of the same weights, summed in another order (16 lanes against
      // OpenBLAS's blocking): fp32 rounding, ~1e-7 of the logit scale; 1e-5 is the bound.
      CHECK(prompt < 1e-5);
      for (std::size_t t = 7; t < ids.size(); ++t)
        CHECK(relative_error(mapped.forward(all.subspan(t, 1), a, moonlight::LogitsFor::all_tokens, path),
                             widened.forward(all.subspan(t, 1), b, moonlight::LogitsFor::all_tokens, path)) < 1e-5);
    }
    CHECK_THROWS_AS((void)mapped.weights(), muon::InvalidArgument);
  }
}

TEST_CASE("Moonlight-16B's real tensor shapes, 2 layers and 8 experts: init, map, and the bf16 path's logits") {
  // Every width of the real config (hidden 2048, 16 heads of 192/128, kv_lora 512, dense 11264,
  // experts 1408, shared 2816) with one dense and one MoE layer, 8 experts (top-6) and a small
  // vocabulary: the real products' shapes within CI's time and memory (218M parameters).
  nlohmann::json j = Config::load(std::filesystem::path(MOONLIGHT_CONFIG_DIR) / "moonlight-16b-a3b.json").json;
  j["num_hidden_layers"] = 2;
  j["n_routed_experts"] = 8;
  j["vocab_size"] = 8448;
  j["bos_token_id"] = 8192;
  j["eos_token_id"] = 8193;
  const Config config = Config::from_json(j);
  const muon::test::TempDir dir("moonlight_real_shapes");
  moonlight::init_checkpoint(dir / "bf16", config, 1, {.dtype = moonlight::SaveDType::bf16, .max_shard_bytes = 200'000'000});
  const Model mapped = Model::map(dir / "bf16");
  const Model widened = Model::load(dir / "bf16");
  const std::vector<std::int32_t> ids = some_ids(config, 12);
  KvCache a(config), b(config);
  const std::span<const std::int32_t> all(ids);
  const Matrix prompt = mapped.forward(all.first(11), a);
  CHECK(prompt.allFinite());
  CHECK(relative_error(prompt, widened.forward(all.first(11), b)) < 1e-5);
  CHECK(relative_error(mapped.forward(all.subspan(11), a), widened.forward(all.subspan(11), b)) < 1e-5);
}

TEST_CASE("a mapped F32 checkpoint is read in place and gives the loaded model's logits bit for bit") {
  const Model mapped = Model::map(fixture("tiny_moonlight"));
  const Model loaded = Model::load(fixture("tiny_moonlight"));
  const std::vector<std::int32_t> ids = some_ids(mapped.config(), 6);
  CHECK(mapped.forward(ids) == loaded.forward(ids));
}

#if !defined(__SANITIZE_ADDRESS__)  // ASan's shadow memory makes the resident set meaningless
namespace {

// Bytes of the files in `dir`.
std::uintmax_t directory_bytes(const std::filesystem::path& dir) {
  std::uintmax_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) total += e.file_size();
  return total;
}

// This process's resident set, from /proc/self/status (VmRSS, kB).
std::int64_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      std::int64_t kb = 0;
      status >> kb;
      return kb * 1024;
    }
    status.ignore(1 << 12, '\n');
  }
  FAIL("no VmRSS in /proc/self/status");
  return 0;
}

}  // namespace

TEST_CASE("the resident memory of a mapped BF16 model is about its checkpoint's size, not twice it") {
  // A model of ~50M parameters (100 MB in bf16), so that the checkpoint dwarfs the process's other
  // memory and the fp32 path's extra copy (200 MB) could not hide in the margin.
  nlohmann::json j = Config::load(fixture("tiny_moonlight/config.json")).json;
  j["hidden_size"] = 512;
  j["intermediate_size"] = 1536;
  j["moe_intermediate_size"] = 512;
  j["n_routed_experts"] = 16;
  j["num_experts_per_tok"] = 4;
  j["num_hidden_layers"] = 4;
  const Config config = Config::from_json(j);
  const muon::test::TempDir dir("moonlight_rss");
  moonlight::init_checkpoint(dir.path(), config, 1, {.dtype = moonlight::SaveDType::bf16});
  const auto file_bytes = static_cast<std::int64_t>(directory_bytes(dir.path()));
  REQUIRE(file_bytes > 90'000'000);
  {
    const Model warm = Model::map(fixture("tiny_moonlight"));  // BLAS and OpenMP buffers, before measuring
    (void)warm.forward(some_ids(warm.config(), 16));
  }
  const std::int64_t before = resident_bytes();
  const Model model = Model::map(dir.path());
  (void)model.forward(some_ids(config, 64));  // reads the dense weights and the experts the tokens chose
  const std::int64_t grown = resident_bytes() - before;
  MESSAGE("checkpoint " << file_bytes / 1000000 << " MB, resident growth " << grown / 1000000 << " MB");
  // The mapping's pages (≤ the file), the fp32 copies of norms and kv_b_proj (< 1%), activations and
  // a 2 MiB tile: within 10% + 16 MiB of the file. Model::load (fp32) grows by ~2× the file here
  // (186 MB for 91 MB) and fails it.
  CHECK(grown <= file_bytes + file_bytes / 10 + (16 << 20));
}
#endif
