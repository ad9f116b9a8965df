// QK-clip for MLA (moonlight/qk_clip.hpp): the per-head maximum logits the training pass records,
// and the clip, on both fixture models (q_proj, and q LoRA's q_b_proj): a clipped head's maximum
// becomes τ, nothing else changes a bit, τ = ∞ is no clip; in the trainer, the metrics carry the
// maxima and the count, and a resume after clips is bit for bit. The 2-rank ZeRO-1 case is in
// test_train_mpi.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "fixtures.hpp"
#include "moonlight/backward.hpp"
#include "moonlight/checkpoint.hpp"
#include "moonlight/corpus.hpp"
#include "moonlight/model.hpp"
#include "moonlight/progress.hpp"
#include "moonlight/qk_clip.hpp"
#include "moonlight/train_options.hpp"
#include "moonlight/trainer.hpp"
#include "muon/backends/eigen.hpp"
#include "muon/distributed/self.hpp"
#include "muon/io/safetensors.hpp"
#include "phrase_data.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using moonlight::MaxLogits;
using moonlight::test::fixture;
using Trainer = moonlight::Trainer<muon::distributed::SelfCommunicator>;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// After a clip, a head's largest logit is τ up to fp32 rounding: the scaled weights are rounded
// once each, and q, k and the logit are recomputed from them in fp32 (sums of 16–64 products, of
// one sign of cancellation or another). Measured: at most 1.6e-7 relative on these fixtures; the
// bound leaves room for other summation orders (BLAS builds) without admitting a wrong factor
// (√γ instead of γ on q_rope moves the clipped maxima by 1.6e-3 to 0.17 of τ here).
constexpr double kTauTolerance = 2e-6;

struct Batch {
  std::vector<std::int32_t> inputs, targets;
};

Batch fixture_batch(const std::string& name) {
  const std::vector<std::int32_t> ids =
      moonlight::test::read_ids(muon::safetensors::File::open(fixture(name) / "gradients.safetensors"), "ids");
  return {{ids.begin(), ids.end() - 1}, {ids.begin() + 1, ids.end()}};
}

moonlight::Weights copied_weights(const moonlight::Model& model) {
  moonlight::Weights w(model.config());
  std::ranges::copy(model.weights().data(), w.data().begin());
  return w;
}

// The per-head maxima of one training pass of `batch` on `w`.
MaxLogits max_logits_of(const moonlight::Config& c, const moonlight::Weights& w, const Batch& b) {
  std::vector<float> grads(w.data().size(), 0.0f);
  MaxLogits seen;
  (void)moonlight::loss_and_gradients<float>(c, w, w.data(), b.inputs, b.targets, grads, nullptr, {}, &seen);
  return seen;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The rows of tensor `name` that differ in any bit between a and b.
std::vector<std::int64_t> changed_rows(const moonlight::Weights& a, const moonlight::Weights& b, const std::string& name) {
  const std::int64_t cols = a.spec(name).shape.back();
  const auto x = a.values(name), y = b.values(name);
  std::vector<std::int64_t> rows;
  for (std::int64_t r = 0; r < static_cast<std::int64_t>(x.size()) / cols; ++r)
    if (!same_bits(x.subspan(static_cast<std::size_t>(r * cols), static_cast<std::size_t>(cols)),
                   y.subspan(static_cast<std::size_t>(r * cols), static_cast<std::size_t>(cols))))
      rows.push_back(r);
  return rows;
}

std::vector<std::int64_t> range(std::int64_t first, std::int64_t count) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) v[static_cast<std::size_t>(i)] = first + i;
  return v;
}

// The largest |after/before − factor| / factor over the rows [first, first + count) of `name`.
double worst_ratio_error(const moonlight::Weights& before, const moonlight::Weights& after, const std::string& name,
                         std::int64_t first, std::int64_t count, double factor) {
  const std::int64_t cols = before.spec(name).shape.back();
  const auto x = before.values(name), y = after.values(name);
  double worst = 0.0;
  for (std::int64_t k = first * cols; k < (first + count) * cols; ++k) {
    const auto i = static_cast<std::size_t>(k);
    if (x[i] != 0.0f) worst = std::max(worst, std::abs(static_cast<double>(y[i]) / x[i] - factor) / factor);
  }
  return worst;
}

}  // namespace

TEST_CASE("a clipped head's maximum logit becomes tau, and every other head keeps its bits") {
  muon::EigenBackend backend;
  double worst = 0.0;
  for (const char* name : {"tiny_moonlight", "tiny_qlora_groups"}) {
    CAPTURE(name);
    const moonlight::Model model = moonlight::Model::load(fixture(name));
    const moonlight::Config& c = model.config();
    const Batch batch = fixture_batch(name);
    const moonlight::Weights original = copied_weights(model);
    const MaxLogits before = max_logits_of(c, original, batch);
    REQUIRE(before.heads.size() == static_cast<std::size_t>(c.num_hidden_layers));
    // One layer at a time, so that the layer's input is the same in both passes (a clip changes
    // what the layers after it see): τ between the layer's smallest and largest maxima.
    for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
      CAPTURE(l);
      const std::vector<double>& layer = before.heads[static_cast<std::size_t>(l)];
      REQUIRE(layer.size() == static_cast<std::size_t>(c.num_attention_heads));
      const auto [low, high] = std::ranges::minmax(layer);
      REQUIRE(low < high);
      const double tau = 0.5 * (low + high);
      MaxLogits only_this = MaxLogits::empty(c);
      only_this.heads[static_cast<std::size_t>(l)] = layer;
      moonlight::Weights w = copied_weights(model);
      const std::int64_t clipped = moonlight::qk_clip(backend, w, c, only_this, tau);
      CHECK(clipped == std::ranges::count_if(layer, [&](double s) { return s > tau; }));
      const MaxLogits after = max_logits_of(c, w, batch);
      for (std::int64_t k = 0; k <= l; ++k)
        for (std::size_t h = 0; h < layer.size(); ++h) {
          CAPTURE(k);
          CAPTURE(h);
          const double s = before.heads[static_cast<std::size_t>(k)][h], t = after.heads[static_cast<std::size_t>(k)][h];
          if (k == l && s > tau) {
            worst = std::max(worst, std::abs(t - tau) / tau);
            CHECK(std::abs(t - tau) <= kTauTolerance * tau);
          } else {
            CHECK(t == s);  // the same weights and input: the same bits
          }
        }
    }
  }
  MESSAGE("largest relative error of a clipped maximum against tau: " << worst);
}

TEST_CASE("the clip scales q_nope and k_nope rows by sqrt(gamma), q_rope rows by gamma, and nothing else") {
  muon::EigenBackend backend;
  for (const char* name : {"tiny_moonlight", "tiny_qlora_groups"}) {
    CAPTURE(name);
    const moonlight::Model model = moonlight::Model::load(fixture(name));
    const moonlight::Config& c = model.config();
    const std::int64_t dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim, dv = c.v_head_dim, dqk = c.qk_head_dim();
    const moonlight::Weights before = copied_weights(model);
    const MaxLogits seen = max_logits_of(c, before, fixture_batch(name));
    std::vector<double> all = seen.flat();
    std::ranges::sort(all);
    const double tau = all[all.size() / 2];  // about half the heads clipped, in every layer or some
    moonlight::Weights after = copied_weights(model);
    const std::int64_t clipped = moonlight::qk_clip(backend, after, c, seen, tau);
    CHECK(clipped == std::ranges::count_if(all, [&](double s) { return s > tau; }));
    REQUIRE(clipped > 0);

    for (const moonlight::TensorSpec& t : before.tensors()) {
      CAPTURE(t.name);
      std::vector<std::int64_t> expected;
      for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
        const bool is_q = t.name == moonlight::query_weight_name(c, l);
        const bool is_kv_b = t.name == "model.layers." + std::to_string(l) + ".self_attn.kv_b_proj.weight";
        if (!is_q && !is_kv_b) continue;
        for (std::int64_t h = 0; h < c.num_attention_heads; ++h) {
          const double s = seen.heads[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
          if (!(s > tau)) continue;
          const double gamma = tau / s;
          // Each factor is rounded to float once; the product with a weight once more.
          if (is_q) {
            CHECK(worst_ratio_error(before, after, t.name, h * dqk, dn, std::sqrt(gamma)) < 2e-7);
            CHECK(worst_ratio_error(before, after, t.name, h * dqk + dn, dr, gamma) < 2e-7);
            const std::vector<std::int64_t> rows = range(h * dqk, dqk);
            expected.insert(expected.end(), rows.begin(), rows.end());
          } else {
            CHECK(worst_ratio_error(before, after, t.name, h * (dn + dv), dn, std::sqrt(gamma)) < 2e-7);
            const std::vector<std::int64_t> rows = range(h * (dn + dv), dn);  // the values' rows stay
            expected.insert(expected.end(), rows.begin(), rows.end());
          }
        }
      }
      // kv_a_proj (the shared k_rope), the values, o_proj, unclipped heads: every bit kept.
      CHECK(changed_rows(before, after, t.name) == expected);
    }
  }
}

TEST_CASE("tau = infinity, or above every maximum, is no clip, and bad input is an error") {
  muon::EigenBackend backend;
  const moonlight::Model model = moonlight::Model::load(fixture("tiny_moonlight"));
  const moonlight::Config& c = model.config();
  const MaxLogits seen = max_logits_of(c, model.weights(), fixture_batch("tiny_moonlight"));
  for (const double tau : {kInf, seen.overall()}) {
    moonlight::Weights w = copied_weights(model);
    CHECK(moonlight::qk_clip(backend, w, c, seen, tau) == 0);
    CHECK(same_bits(w.data(), model.weights().data()));
  }
  moonlight::Weights w = copied_weights(model);
  CHECK_THROWS_AS(moonlight::qk_clip(backend, w, c, seen, 0.0), muon::InvalidArgument);
  CHECK_THROWS_AS(moonlight::qk_clip(backend, w, c, seen, std::nan("")), muon::InvalidArgument);
  CHECK_THROWS_AS(moonlight::qk_clip(backend, w, c, MaxLogits{}, 1.0), muon::ShapeMismatch);
  // A NaN maximum clips nothing, and max keeps the NaN from either side.
  MaxLogits nan = MaxLogits::empty(c);
  nan.heads[0][0] = std::nan("");
  CHECK(moonlight::qk_clip(backend, w, c, nan, 1.0) == 0);
  CHECK(std::isnan(MaxLogits::max(std::nan(""), 1.0)));
  CHECK(std::isnan(MaxLogits::max(1.0, std::nan(""))));
  CHECK(same_bits(w.data(), model.weights().data()));
}

TEST_CASE("the recorded maxima are the largest causal logits, softmax scale included") {
  // Layer 0 of the fixture model by hand: logits (q·k)/√d_qk of every query and key t' ≤ t.
  const moonlight::Model model = moonlight::Model::load(fixture("tiny_moonlight"));
  const moonlight::Config& c = model.config();
  const Batch batch = fixture_batch("tiny_moonlight");
  const moonlight::Network<float> net(c, model.weights(), model.weights().data());
  const moonlight::layers::Mat<float> x = net.decoder[0].input_norm.forward(net.embedding.forward(batch.inputs));
  moonlight::layers::Attention<float>::Tape tape;
  (void)net.decoder[0].attention.forward(x, &tape);
  const std::int64_t T = x.rows(), dn = c.qk_nope_head_dim, dv = c.v_head_dim, dqk = c.qk_head_dim(), r = c.kv_lora_rank;
  int masked_larger = 0;  // heads whose largest logit overall is a masked one: the mask matters
  for (std::int64_t head = 0; head < c.num_attention_heads; ++head) {
    double expected = -kInf, unmasked = -kInf;
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t u = 0; u < T; ++u) {
        double dot = 0.0;
        for (std::int64_t i = 0; i < dn; ++i) dot += double{tape.q(t, head * dqk + i)} * tape.kv(u, head * (dn + dv) + i);
        for (std::int64_t i = 0; i < c.qk_rope_head_dim; ++i) dot += double{tape.q(t, head * dqk + dn + i)} * tape.kv_a(u, r + i);
        const double logit = dot / std::sqrt(static_cast<double>(dqk));
        unmasked = std::max(unmasked, logit);
        if (u <= t) expected = std::max(expected, logit);
      }
    CAPTURE(head);
    // fp32 logits against fp64 sums of the same fp32 operands.
    CHECK(tape.max_logit[static_cast<std::size_t>(head)] == doctest::Approx(expected).epsilon(1e-5));
    if (unmasked > expected + 1e-3 * std::abs(expected)) ++masked_larger;
  }
  CHECK(masked_larger > 0);
}

namespace {


moonlight::RunConfig clip_run(moonlight::QkClipOptions clip) {
  moonlight::RunConfig run{moonlight::Config::load(fixture("tiny_moonlight") / "config.json"),
                           {.steps = 6, .seq_len = 16, .micro_batch = 4, .grad_accum = 2, .warmup_steps = 1,
                            .eval_every = 3, .eval_sequences = 4, .checkpoint_every = 3, .keep_checkpoints = 5,
                            .qk_clip = clip}};
  run.muon.lr = 1e-2;
  return run;
}

// τ between the heads' maxima of this run's first step (they are about 1 at initialisation), so
// that every step clips some heads and leaves others.
constexpr double kRunTau = 1.0;

const fs::path tokenizer_file = fixture("bpe_sample_1024.tiktoken");

std::vector<moonlight::StepMetrics> train(Trainer& t) {
  std::vector<moonlight::StepMetrics> seen;
  t.train([&](const moonlight::StepMetrics& m) { seen.push_back(m); });
  return seen;
}

}  // namespace

TEST_CASE("the trainer clips after each step by the step's maxima, and logs them and the count") {
  muon::test::TempDir dir("qk_clip_train");
  const moonlight::PackedSequences data = moonlight::test::phrase_data(16);
  Trainer plain(clip_run({}), data, tokenizer_file, dir.path() / "plain", {});
  Trainer clipped(clip_run({.enabled = true, .tau = kRunTau}), data, tokenizer_file, dir.path() / "clipped", {});
  // The first step: the same weights and batch, so the same maxima; the clip comes after.
  const moonlight::StepMetrics a = plain.train_step(), b = clipped.train_step();
  CHECK(a.max_logits == b.max_logits);
  // Over every micro-batch and thread: 2 micro-batches of 4 give the maxima of one batch of 8.
  moonlight::RunConfig one_batch = clip_run({});
  one_batch.training.micro_batch = 8;
  one_batch.training.grad_accum = 1;
  Trainer whole(one_batch, data, tokenizer_file, dir.path() / "whole", {});
  // Within fp32 rounding (a thread stacks 4 sequences instead of 2): measured a few ulp.
  CHECK(moonlight::test::same_maxima(whole.train_step().max_logits, a.max_logits));
  REQUIRE(b.max_logits.size() == 3);
  CHECK(b.max_logits[0].size() == 4);
  CHECK(!a.qk_clipped.has_value());
  REQUIRE(b.qk_clipped.has_value());
  const auto over = [](const std::vector<std::vector<double>>& m) {
    std::int64_t n = 0;
    for (const auto& layer : m) n += std::ranges::count_if(layer, [](double s) { return s > kRunTau; });
    return n;
  };
  CHECK(*b.qk_clipped == over(b.max_logits));
  CHECK(*b.qk_clipped > 0);
  CHECK(*b.qk_clipped < 12);
  // Only the query and kv_b weights differ from the unclipped step's.
  for (const moonlight::TensorSpec& t : plain.weights().tensors()) {
    CAPTURE(t.name);
    const bool touched = t.name.ends_with("q_proj.weight") || t.name.ends_with("kv_b_proj.weight");
    CHECK(same_bits(plain.weights().values(t.name), clipped.weights().values(t.name)) != touched);
  }

  (void)train(clipped);
  std::ifstream metrics(dir.path() / "clipped" / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    CHECK(j.at("max_logits").size() == 3);
    CHECK(j.at("qk_clipped").get<std::int64_t>() == over(j.at("max_logits").get<std::vector<std::vector<double>>>()));
    ++lines;
  }
  CHECK(lines == 5);  // steps 2–6: train() logs what it runs
}

TEST_CASE("QK-clip with tau = infinity trains bit for bit as without it") {
  muon::test::TempDir dir("qk_clip_inf");
  const moonlight::PackedSequences data = moonlight::test::phrase_data(16);
  Trainer plain(clip_run({}), data, tokenizer_file, dir.path() / "plain", {});
  Trainer infinite(clip_run({.enabled = true, .tau = kInf}), data, tokenizer_file, dir.path() / "inf", {});
  const std::vector<moonlight::StepMetrics> a = train(plain), b = train(infinite);
  REQUIRE(a.size() == b.size());
  for (std::size_t k = 0; k < a.size(); ++k) {
    CHECK(b[k].qk_clipped == 0);
    CHECK(a[k].max_logits == b[k].max_logits);
  }
  CHECK(same_bits(plain.weights().data(), infinite.weights().data()));
}

TEST_CASE("a run with QK-clip resumes bit for bit after clips") {
  muon::test::TempDir dir("qk_clip_resume");
  const moonlight::PackedSequences data = moonlight::test::phrase_data(16);
  const moonlight::RunConfig run = clip_run({.enabled = true, .tau = kRunTau});
  Trainer straight(run, data, tokenizer_file, dir.path() / "straight", {});
  const std::vector<moonlight::StepMetrics> seen = train(straight);
  for (const moonlight::StepMetrics& m : seen) CHECK(m.qk_clipped > 0);
  {
    Trainer interrupted(run, data, tokenizer_file, dir.path() / "resumed", {});
    CHECK_THROWS_WITH(interrupted.train([&](const moonlight::StepMetrics& m) {
      if (m.step == 4) throw std::runtime_error("crash after step 4");
    }),
                      "crash after step 4");
  }
  const moonlight::VerifiedCheckpoint c = moonlight::open_checkpoint(dir.path() / "resumed");
  CHECK(c.step == 3);
  // The clip settings come back with the checkpoint's run config.
  const moonlight::RunConfig saved = moonlight::run_config_from_json(c.state.run, "checkpoint");
  CHECK(saved.training.qk_clip.enabled);
  CHECK(saved.training.qk_clip.tau == kRunTau);
  Trainer resumed(saved, data, tokenizer_file, dir.path() / "resumed", {});
  resumed.resume(c);
  (void)train(resumed);
  CHECK(same_bits(straight.weights().data(), resumed.weights().data()));
}

TEST_CASE("qk_clip in the run config: defaults, values, and errors that name the field") {
  const nlohmann::json model = moonlight::Config::load(fixture("tiny_moonlight") / "config.json").json;
  const auto run = [&](const nlohmann::json& training) {
    return moonlight::run_config_from_json({{"model", model}, {"training", training}}, "test");
  };
  const moonlight::RunConfig d = run(nlohmann::json::object());
  CHECK(!d.training.qk_clip.enabled);
  CHECK(d.training.qk_clip.tau == 100.0);  // Kimi K2's
  const moonlight::RunConfig on = run({{"qk_clip", {{"enabled", true}, {"tau", 30}}}});
  CHECK(on.training.qk_clip.enabled);
  CHECK(on.training.qk_clip.tau == 30.0);
  CHECK(run({{"qk_clip", {{"tau", 30}}}}).training.qk_clip.enabled == false);  // a missing field keeps its default
  const moonlight::RunConfig again = moonlight::run_config_from_json(moonlight::to_json(on), "saved");
  CHECK(muon::equal_fields(again.training, on.training));
  CHECK_THROWS_WITH_AS(run({{"qk_clip", {{"tau", 0}}}}), doctest::Contains("training.qk_clip.tau must be finite and > 0"),
                       muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(run({{"qk_clip", {{"enabled", 1}}}}), doctest::Contains("training.qk_clip.enabled"),
                       muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(run({{"qk_clip", {{"threshold", 50}}}}), doctest::Contains("training.qk_clip.threshold is not an option"),
                       muon::InvalidArgument);
}

TEST_CASE("the progress line shows the step's largest logit and the clipped heads") {
  moonlight::ProgressState s{.step = 120, .total_steps = 1000, .loss = 4.2134, .tokens_per_s = 18300, .lr = 4.2e-4,
                             .elapsed_s = 24, .first_step = 100};
  s.max_logit = 131.44;
  CHECK(moonlight::progress_line(s, 4).ends_with("| lr 4.20e-04 | max logit 131.4 | ETA 17m36s"));
  s.qk_clipped = 3;
  CHECK(moonlight::progress_line(s, 4).ends_with("| lr 4.20e-04 | max logit 131.4, 3 clipped | ETA 17m36s"));
}
