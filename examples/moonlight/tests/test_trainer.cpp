// The training loop (moonlight/trainer.hpp), checkpoints (checkpoint.hpp) and run configs
// (train_options.hpp) on the tiny fixture model (hidden 64, 3 layers, 8 experts, vocab 300).
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

#include "custom_options.hpp"
#include "fixtures.hpp"
#include "moonlight/checkpoint.hpp"
#include "moonlight/config.hpp"
#include "moonlight/corpus.hpp"
#include "moonlight/metrics_log.hpp"
#include "moonlight/train_options.hpp"
#include "moonlight/trainer.hpp"
#include "muon/distributed/self.hpp"
#include "phrase_data.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using moonlight::test::fixture;
using moonlight::test::phrase_data;
using Trainer = moonlight::Trainer<muon::distributed::SelfCommunicator>;

namespace {

moonlight::RunConfig tiny_run(moonlight::TrainOptions o) {
  moonlight::RunConfig run{moonlight::Config::load(fixture("tiny_moonlight") / "config.json"), o};
  run.muon.lr = 1e-2;
  return run;
}

moonlight::TrainOptions fast_options() {
  return {.steps = 6, .seq_len = 16, .micro_batch = 4, .warmup_steps = 1, .eval_every = 3, .eval_sequences = 4,
          .checkpoint_every = 3, .keep_checkpoints = 5};
}

const fs::path tokenizer_file = fixture("bpe_sample_1024.tiktoken");

std::vector<moonlight::StepMetrics> train(Trainer& t) {
  std::vector<moonlight::StepMetrics> seen;
  t.train([&](const moonlight::StepMetrics& m) { seen.push_back(m); });
  return seen;
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_text(const fs::path& file, const std::string& text) { std::ofstream(file, std::ios::binary) << text; }

// Rewrites a checkpoint's manifest after `edit`, with its own CRC recomputed: damage that the
// manifest's CRC cannot catch, as a crafted checkpoint would be.
template <class Edit>
void reseal(const fs::path& dir, Edit&& edit) {
  nlohmann::json manifest = nlohmann::json::parse(read_text(dir / "manifest.json"));
  edit(manifest);
  manifest["crc32"] = moonlight::detail::crc32_of(moonlight::detail::manifest_body(manifest));
  write_text(dir / "manifest.json", manifest.dump(2));
}
// The manifest entry of a file as it is now.
void record(nlohmann::json& manifest, const fs::path& dir, const std::string& name) {
  const moonlight::detail::FileDigest d = moonlight::detail::digest_file(dir / name);
  manifest["files"][name] = {{"bytes", d.size}, {"crc32", d.crc32}};
}

std::vector<std::int64_t> metrics_steps(const fs::path& file) {
  std::ifstream in(file);
  std::string line;
  std::vector<std::int64_t> steps;
  while (std::getline(in, line)) steps.push_back(nlohmann::json::parse(line).at("step").get<std::int64_t>());
  return steps;
}

}  // namespace

TEST_CASE("training lowers the loss, balances the experts and logs every step") {
  muon::test::TempDir dir("train_learns");
  const moonlight::PackedSequences data = phrase_data(16);
  moonlight::TrainOptions o = fast_options();
  o.steps = 30;
  o.eval_every = 10;
  o.checkpoint_every = 0;
  Trainer trainer(tiny_run(o), data, tokenizer_file, dir.path(), {});
  const std::vector<moonlight::StepMetrics> seen = train(trainer);
  REQUIRE(seen.size() == 30);
  CHECK(seen.front().loss > 5.0);  // ≈ ln 300 at initialisation (std 0.1)
  CHECK(seen.back().loss < 0.5 * seen.front().loss);
  REQUIRE(seen.back().val_loss.has_value());
  CHECK(*seen.back().val_loss < 0.5 * seen.front().loss);
  CHECK(seen.back().tokens == 30 * 4 * 16);
  CHECK(seen.back().expert_load.size() == 2);  // layers 1 and 2 are MoE; 8 experts each
  CHECK(std::accumulate(seen.back().expert_load[0].begin(), seen.back().expert_load[0].end(), std::int64_t{0}) ==
        4 * 16 * 3);  // every token routed to top-3

  // The bias moved by the balancing rule, which keeps its sum at zero.
  const auto bias = trainer.weights().values("model.layers.1.mlp.gate.e_score_correction_bias");
  double sum = 0.0, moved = 0.0;
  for (float b : bias) sum += b, moved += std::abs(b);
  CHECK(moved > 0.0);
  CHECK(std::abs(sum) < 1e-6);  // float rounding of 30 updates of ±1e-3

  std::ifstream metrics(dir.path() / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) ++lines;
  CHECK(lines == 30);
}

TEST_CASE("the sequence-wise balance loss is reported apart from the cross-entropy") {
  muon::test::TempDir dir("train_aux");
  const moonlight::PackedSequences data = phrase_data(16);
  moonlight::TrainOptions o = fast_options();
  o.steps = 2;
  o.checkpoint_every = 0;
  Trainer plain(tiny_run(o), data, tokenizer_file, dir.path() / "plain", {});
  o.aux_loss_alpha = 0.01;
  Trainer aux(tiny_run(o), data, tokenizer_file, dir.path() / "aux", {});
  const moonlight::StepMetrics a = plain.train_step(), b = aux.train_step();
  CHECK(a.aux_loss == 0.0);
  // The same weights and batch: the same cross-entropy, up to the float rounding of CE + aux.
  CHECK(b.loss == doctest::Approx(a.loss).epsilon(1e-6));
  // α·Σ_layers L_Bal with L_Bal between the smallest and largest f_i (≈ 1 when balanced): 2 layers.
  CHECK(b.aux_loss > 0.01 * 2 * 0.2);
  CHECK(b.aux_loss < 0.01 * 2 * 8 / 3);  // f_i ≤ N_r/K_r
  CHECK(b.grad_norm != a.grad_norm);      // and it reaches the gradients
}

TEST_CASE("a resumed run equals an uninterrupted one bit for bit") {
  muon::test::TempDir dir("train_resume");
  const moonlight::PackedSequences data = phrase_data(16);
  Trainer straight(tiny_run(fast_options()), data, tokenizer_file, dir.path() / "straight", {});
  (void)train(straight);

  // A run that stopped after its step-3 checkpoint (steps 4–6 lost), then resumed.
  {
    Trainer interrupted(tiny_run(fast_options()), data, tokenizer_file, dir.path() / "resumed", {});
    CHECK_THROWS_WITH(interrupted.train([&](const moonlight::StepMetrics& m) {
      if (m.step == 4) throw std::runtime_error("crash after the step-4 metrics line");
    }),
                      "crash after the step-4 metrics line");
  }
  const moonlight::VerifiedCheckpoint c = moonlight::open_checkpoint(dir.path() / "resumed");
  CHECK(c.step == 3);
  Trainer resumed(tiny_run(fast_options()), data, tokenizer_file, dir.path() / "resumed", {});
  resumed.resume(c);
  (void)train(resumed);
  CHECK(same_bits(straight.weights().data(), resumed.weights().data()));

  // metrics.jsonl dropped the crashed run's step-4 line and holds steps 1..6 once.
  CHECK(metrics_steps(dir.path() / "resumed" / "metrics.jsonl") == std::vector<std::int64_t>{1, 2, 3, 4, 5, 6});
}

TEST_CASE("a checkpoint is a Hugging Face directory, its latest link moves, and a damaged file is refused") {
  muon::test::TempDir dir("train_ckpt");
  const moonlight::PackedSequences data = phrase_data(16);
  moonlight::TrainOptions o = fast_options();
  o.keep_checkpoints = 1;
  Trainer trainer(tiny_run(o), data, tokenizer_file, dir.path(), {});
  (void)train(trainer);
  CHECK(fs::read_symlink(dir.path() / "latest") == fs::path("checkpoints") / "step-00000006");
  CHECK_FALSE(fs::exists(dir.path() / "checkpoints" / "step-00000003"));  // keep_checkpoints = 1
  const fs::path ckpt = dir.path() / "checkpoints" / "step-00000006";
  for (const char* f : {"config.json", "model.safetensors", "tiktoken.model", "optimizer.safetensors", "trainer.json"})
    CHECK(fs::exists(ckpt / f));
  // The saved model is what the trainer holds, readable as a plain checkpoint.
  const moonlight::Weights loaded = moonlight::Weights::load(ckpt, trainer.run().model);
  CHECK(same_bits(loaded.data(), trainer.weights().data()));

  {
    std::fstream f(ckpt / "optimizer.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  }
  CHECK_THROWS_WITH_AS(moonlight::open_checkpoint(dir.path()),
                       doctest::Contains("file 'optimizer.safetensors' does not match its recorded size and CRC-32"),
                       muon::FileError);
}

TEST_CASE("a checkpoint is verified as one unit: the manifest, every file, the names and the step") {
  muon::test::TempDir dir("train_manifest");
  const moonlight::PackedSequences data = phrase_data(16);
  const moonlight::TrainOptions o = fast_options();  // 6 steps, checkpoints at 3 and 6
  Trainer trainer(tiny_run(o), data, tokenizer_file, dir.path() / "run", {});
  (void)train(trainer);
  const fs::path step3 = dir.path() / "run" / "checkpoints" / "step-00000003";
  const fs::path step6 = dir.path() / "run" / "checkpoints" / "step-00000006";
  CHECK(moonlight::open_checkpoint(step3).step == 3);

  int copies = 0;
  // A copy of the step-3 checkpoint under `name`, damaged by `damage`; opening it must fail
  // with a FileError whose message contains `expected`.
  const auto refused = [&](const char* name, auto&& damage, const std::string& expected) {
    const fs::path copy = dir.path() / ("copy" + std::to_string(copies++)) / name;
    fs::create_directories(copy.parent_path());
    fs::copy(step3, copy);
    damage(copy);
    CHECK_THROWS_WITH_AS((void)moonlight::open_checkpoint(copy), doctest::Contains(expected.c_str()), muon::FileError);
  };
  const char* const step3_name = "step-00000003";
  refused(step3_name, [](const fs::path& d) { fs::remove(d / "manifest.json"); }, "has no manifest.json");
  refused(step3_name, [](const fs::path& d) {
    std::string t = read_text(d / "trainer.json");
    t.replace(t.find("\"step\": 3"), 9, "\"step\": 4");
    write_text(d / "trainer.json", t);
  }, "file 'trainer.json' does not match its recorded size and CRC-32");
  refused(step3_name, [](const fs::path& d) {
    std::string t = read_text(d / "manifest.json");
    t.replace(t.find("\"step\": 3"), 9, "\"step\": 4");
    write_text(d / "manifest.json", t);
  }, "manifest.json does not match its own CRC-32");
  refused(step3_name, [](const fs::path& d) {
    reseal(d, [](nlohmann::json& m) { m["files"]["../trainer.json"] = m["files"]["trainer.json"]; });
  }, "lists '../trainer.json', which is not a plain file name");
  refused(step3_name, [](const fs::path& d) {
    reseal(d, [](nlohmann::json& m) { m["files"]["/dev/zero"] = {{"bytes", 0}, {"crc32", 0}}; });
  }, "lists '/dev/zero', which is not a plain file name");
  refused(step3_name, [](const fs::path& d) { reseal(d, [](nlohmann::json& m) { m["step"] = 4; }); },
          "manifest.json is of step 4 but the directory is named step-00000003");
  refused("renamed", [](const fs::path& d) { reseal(d, [](nlohmann::json& m) { m["step"] = 4; }); },
          "trainer.json is of step 3 but manifest.json of step 4");
  refused(step3_name, [](const fs::path& d) { write_text(d / "notes.txt", "hi"); },
          "'notes.txt' is not in manifest.json");
  refused(step3_name, [](const fs::path& d) {
    fs::rename(d / "tiktoken.model", d / "tokenizer-copy");
    fs::create_symlink("tokenizer-copy", d / "tiktoken.model");
    reseal(d, [&](nlohmann::json& m) { record(m, d, "tokenizer-copy"); });
  }, "'tiktoken.model' is not a regular file");
  refused(step3_name, [](const fs::path& d) {
    std::string t = read_text(d / "trainer.json");
    t.replace(t.find("\"tokens\": "), 10, "\"tokens\": 1e300, \"was\": ");
    write_text(d / "trainer.json", t);
    reseal(d, [&](nlohmann::json& m) { record(m, d, "trainer.json"); });
  }, "trainer.json: \"tokens\" is 1e+300, expected an integer");

  // The optimizer state of another step, in an otherwise consistent checkpoint: the trainer refuses it.
  const fs::path mixed = dir.path() / "mixed" / "step-00000003";
  fs::create_directories(mixed.parent_path());
  fs::copy(step3, mixed);
  fs::copy_file(step6 / "optimizer.safetensors", mixed / "optimizer.safetensors", fs::copy_options::overwrite_existing);
  reseal(mixed, [&](nlohmann::json& m) { record(m, mixed, "optimizer.safetensors"); });
  Trainer resumed(tiny_run(o), data, tokenizer_file, dir.path() / "mixed", {});
  CHECK_THROWS_WITH_AS(resumed.resume(moonlight::open_checkpoint(mixed)),
                       doctest::Contains("is of step 3 but its optimizer state has taken 6 steps"), muon::StateMismatch);
}

TEST_CASE("metrics.jsonl: a fresh run starts it anew, a resumed one keeps each earlier step once") {
  muon::test::TempDir dir("train_metrics");
  const fs::path file = dir.path() / "metrics.jsonl";
  write_text(file, "{\"step\":1}\n{\"step\":2,\"loss\":1}\n{\"step\":2,\"loss\":2}\nnot json\n{\"step\":3}\n{\"step\":4,\"lo");
  (void)moonlight::MetricsLog::resume(file, 3);
  CHECK(read_text(file) == "{\"step\":1}\n{\"step\":2,\"loss\":1}\n{\"step\":3}\n");

  // A run killed before its first checkpoint left lines; a fresh start replaces them.
  const moonlight::PackedSequences data = phrase_data(16);
  moonlight::TrainOptions o = fast_options();
  o.steps = 2;
  o.checkpoint_every = 0;
  Trainer trainer(tiny_run(o), data, tokenizer_file, dir.path(), {});
  (void)train(trainer);
  CHECK(metrics_steps(file) == std::vector<std::int64_t>{1, 2});

  // A step's line is written before its checkpoint: when the checkpoint cannot be written (here
  // `checkpoints` is a file), the line of its step is already there.
  const fs::path blocked = dir.path() / "blocked";
  fs::create_directories(blocked);
  write_text(blocked / "checkpoints", "");
  Trainer failing(tiny_run(fast_options()), data, tokenizer_file, blocked, {});
  CHECK_THROWS_AS(train(failing), fs::filesystem_error);
  CHECK(metrics_steps(blocked / "metrics.jsonl") == std::vector<std::int64_t>{1, 2, 3});
}

TEST_CASE("micro-batches with accumulation give the step of one large batch") {
  muon::test::TempDir dir("train_accum");
  const moonlight::PackedSequences data = phrase_data(16);
  // fp32 Newton–Schulz: bf16 rounding would turn the float reassociation of the split batch into
  // differences of a bf16 ulp, which would hide a real accumulation error.
  moonlight::TrainOptions big = fast_options(), split = fast_options();
  big.ns_precision = split.ns_precision = muon::NsPrecision::fp32;
  big.steps = split.steps = 2;
  big.checkpoint_every = split.checkpoint_every = 0;
  split.micro_batch = 2;
  split.grad_accum = 2;
  Trainer a(tiny_run(big), data, tokenizer_file, dir.path() / "a", {});
  Trainer b(tiny_run(split), data, tokenizer_file, dir.path() / "b", {});
  const auto ma = train(a), mb = train(b);
  CHECK(ma.back().loss == doctest::Approx(mb.back().loss).epsilon(1e-5));
  // Same sequences in other products (a thread stacks 2 sequences in one pass, or 1): float
  // rounding, ≈1e-7 relative. An optimizer step amplifies it only where a gradient entry nearly
  // cancels: AdamW's first step moves an entry by lr·g/(|g| + ε), whatever g's size (measured: a
  // few entries of lm_head.weight, whose rows sum (p − y)·h over tokens, moved by 3.7e-5 with
  // lr = 1e-2). So: at most 1 entry in 10,000 beyond 1e-5 (0.1% of lr). A lost or repeated
  // micro-batch changes the direction of most updates, so most entries by ~lr.
  std::size_t beyond = 0;
  const std::span<const float> wa = a.weights().data(), wb = b.weights().data();
  for (std::size_t i = 0; i < wa.size(); ++i) beyond += std::abs(wa[i] - wb[i]) > 1e-5f ? 1 : 0;
  CHECK(beyond <= wa.size() / 10000);
}

TEST_CASE("the optimizer table: Muon on matrices, AdamW elsewhere or everywhere, never the router bias") {
  const moonlight::Config c = moonlight::Config::load(fixture("tiny_moonlight") / "config.json");
  moonlight::Weights w(c);
  std::vector<float> g(w.data().size());
  for (const auto optimizer :
       {moonlight::OptimizerSplit::muon, moonlight::OptimizerSplit::adamw, moonlight::OptimizerSplit::normuon}) {
    const std::vector<muon::Parameter> table = moonlight::training_parameters(w, g, optimizer);
    CHECK(table.size() == w.tensors().size() - 2);  // two MoE layers, one bias each
    for (const muon::Parameter& p : table) {
      CHECK(p.name.find("e_score_correction_bias") == std::string::npos);
      const muon::Rule rule = p.rule.value_or(p.role == muon::Role::matrix ? muon::Rule::muon : muon::Rule::adamw);
      CHECK(rule == (optimizer != moonlight::OptimizerSplit::adamw && p.role == muon::Role::matrix ? muon::Rule::muon
                                                                                                    : muon::Rule::adamw));
    }
  }
}

TEST_CASE("run configs: defaults, overrides, and errors that name the field") {
  const nlohmann::json model = moonlight::Config::load(fixture("tiny_moonlight") / "config.json").json;
  const auto run = [&](const nlohmann::json& training, const nlohmann::json& muon = nlohmann::json::object()) {
    return moonlight::run_config_from_json({{"model", model}, {"training", training}, {"muon", muon}}, "test");
  };
  const moonlight::RunConfig d = run(nlohmann::json::object());
  CHECK(d.training.optimizer == moonlight::OptimizerSplit::muon);
  CHECK(!moonlight::optimizer_options(d).muon.normuon.enabled);
  CHECK(moonlight::optimizer_options(run({{"optimizer", "normuon"}})).muon.normuon.enabled);
  CHECK(d.muon.lr == 2e-3);
  CHECK(d.muon.max_grad_norm == 1.0);
  const moonlight::RunConfig o = run({{"steps", 10}, {"warmup_steps", 2}, {"schedule", "cosine"}}, {{"lr", 0.5}});
  CHECK(o.muon.lr == 0.5);
  const muon::Options opt = moonlight::optimizer_options(o);
  CHECK(std::get<muon::WarmupCosine>(opt.schedule).total_steps == 10);
  CHECK(opt.adamw.beta2 == 0.95f);
  const muon::Options wsd = moonlight::optimizer_options(run({{"steps", 100}, {"decay_fraction", 0.2}}));
  CHECK(std::get<muon::WarmupStableDecay>(wsd.schedule).decay_steps == 20);
  CHECK(std::get<muon::WarmupStableDecay>(wsd.schedule).stable_steps == 60);
  // Every muon::Options field but the derived schedule, by the core's names.
  nlohmann::json custom = muon::to_json(muon::test::custom_options());
  custom.erase("schedule");
  const moonlight::RunConfig all = run(nlohmann::json::object(), custom);
  CHECK(muon::test::differing_fields(all.muon, muon::test::custom_options()) == std::vector<std::string>{"Options.schedule"});
  // And through a checkpoint's saved run config.
  const moonlight::RunConfig again = moonlight::run_config_from_json(moonlight::to_json(all), "saved");
  CHECK(muon::test::differing_fields(again.muon, all.muon).empty());
  CHECK(muon::equal_fields(again.training, all.training));

  CHECK_THROWS_WITH_AS(run({{"learning_rate", 1.0}}), doctest::Contains("training.learning_rate is not an option"),
                       muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(run({{"steps", "ten"}}), doctest::Contains("training.steps is \"ten\", expected an integer"),
                       muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(run({{"optimizer", "sgd"}}),
                       doctest::Contains("training.optimizer is \"sgd\", expected \"muon\", \"adamw\" or \"normuon\""),
                       muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(run({{"steps", 10}, {"warmup_steps", 10}}),
                       doctest::Contains("training.warmup_steps (10) must be below training.steps (10)"),
                       muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(run(nlohmann::json::object(), {{"muon", {{"momentum", 1.5}}}}),
                       doctest::Contains("muon.muon.momentum must be finite and in [0, 1), got 1.5"), muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(run(nlohmann::json::object(), {{"schedule", {{"kind", "constant"}}}}), doctest::Contains("muon.schedule is derived"),
                       muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(moonlight::load_run_config("/nonexistent/tiny.json"),
                       doctest::Contains("cannot open run config '/nonexistent/tiny.json'"), muon::FileError);
}

// `--optimizer normuon`: the trainer's optimizer runs NorMuon, its checkpoints carry the second
// moments, and a resumed run equals an uninterrupted one.
TEST_CASE("training.optimizer normuon trains with NorMuon and resumes bit for bit") {
  muon::test::TempDir dir("train_normuon");
  const moonlight::PackedSequences data = phrase_data(16);
  moonlight::TrainOptions o = fast_options();
  Trainer muon_run(tiny_run(o), data, tokenizer_file, dir.path() / "muon", {});
  (void)train(muon_run);
  o.optimizer = moonlight::OptimizerSplit::normuon;
  Trainer straight(tiny_run(o), data, tokenizer_file, dir.path() / "straight", {});
  (void)train(straight);
  CHECK(moonlight::optimizer_options(straight.run()).muon.normuon.enabled);
  CHECK(!same_bits(straight.weights().data(), muon_run.weights().data()));

  Trainer resumed(tiny_run(o), data, tokenizer_file, dir.path() / "resumed", {});
  const fs::path step3 = dir.path() / "straight" / "checkpoints" / moonlight::checkpoint_name(3);
  REQUIRE(fs::exists(step3));
  resumed.resume(moonlight::open_checkpoint(step3));
  (void)train(resumed);
  CHECK(same_bits(straight.weights().data(), resumed.weights().data()));
}
