// The optimizer users hold: routing, the step's guards, clipping, group overrides, schedules,
// and saving and loading the state.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <muon/backends/eigen.hpp>
#include <muon/muon.hpp>
#include <muon/state_file.hpp>

#include "support.hpp"

using muon::test::random_normal;

namespace {

using Opt = muon::Optimizer<muon::EigenBackend>;

// A tiny Moonlight-shaped table: embedding, attention matrix, expert stack, norm, head.
struct Model {
  std::vector<float> emb = random_normal(40 * 16, 1, 0.02f), q = random_normal(24 * 16, 2, 0.1f),
                     experts = random_normal(4 * 12 * 16, 3, 0.1f), norm = std::vector<float>(16, 1.0f),
                     head = random_normal(40 * 16, 4, 0.02f);
  std::vector<float> demb = emb, dq = q, dexperts = experts, dnorm = norm, dhead = head;

  Model() { set_gradients(100); }
  // Writes in place: the parameter table points into these vectors.
  void set_gradients(std::uint32_t seed) {
    std::uint32_t k = 0;
    for (auto* g : {&demb, &dq, &dexperts, &dnorm, &dhead}) {
      const auto fresh = random_normal(g->size(), seed + ++k);
      std::copy(fresh.begin(), fresh.end(), g->begin());
    }
  }
  std::vector<muon::Parameter> table() {
    return {{"model.embed_tokens.weight", muon::Role::embedding, {emb.data(), {40, 16}}, {demb.data(), {40, 16}}},
            {"model.layers.0.self_attn.q_proj.weight", muon::Role::matrix, {q.data(), {24, 16}}, {dq.data(), {24, 16}}},
            {"model.layers.0.mlp.experts", muon::Role::matrix, {experts.data(), {4, 12, 16}}, {dexperts.data(), {4, 12, 16}}},
            {"model.norm.weight", muon::Role::norm, {norm.data(), {16}}, {dnorm.data(), {16}}},
            {"lm_head.weight", muon::Role::head, {head.data(), {40, 16}}, {dhead.data(), {40, 16}}}};
  }
  [[nodiscard]] std::vector<std::vector<float>> values() const { return {emb, q, experts, norm, head}; }
};

// Runs `steps` steps with a fresh gradient each step (seeded by the step number).
void train(Model& m, Opt& opt, int steps) {
  for (int i = 0; i < steps; ++i) {
    m.set_gradients(static_cast<std::uint32_t>(1000 + 10 * opt.step_count()));
    (void)opt.step();
  }
}

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("muon_test_" + std::to_string(::getpid()) + "_" + name);
}

// A run of 6 steps, and the same run saved after 3 steps and loaded into an optimizer built with
// `fresh` (the saved options replace its own) for the other 3; what the load gave, and both ends.
struct Resumed {
  Model uninterrupted, resumed;
  std::int64_t loaded_step = 0;
  muon::Options loaded_options;
};
Resumed save_and_resume(const muon::Options& options, const muon::Options& fresh, const std::string& file) {
  const auto path = temp_path(file);
  Resumed r;
  Opt full(r.uninterrupted.table(), options);
  train(r.uninterrupted, full, 6);

  Model first;
  Opt before(first.table(), options);
  train(first, before, 3);
  muon::save_state(before, path);
  r.resumed = first;  // the model's weights are the trainer's to save; the optimizer saves its own state
  Opt after(r.resumed.table(), fresh);
  muon::load_state(after, path);
  r.loaded_step = after.step_count();
  r.loaded_options = after.options();
  train(r.resumed, after, 3);
  std::filesystem::remove(path);
  return r;
}

}  // namespace

TEST_CASE("routing follows Moonlight's policy by role, and an explicit rule overrides it") {
  Model m;
  Opt opt(m.table());
  CHECK(opt.rule_of("model.embed_tokens.weight") == muon::Rule::adamw);
  CHECK(opt.rule_of("model.layers.0.self_attn.q_proj.weight") == muon::Rule::muon);
  CHECK(opt.rule_of("model.layers.0.mlp.experts") == muon::Rule::muon);
  CHECK(opt.rule_of("model.norm.weight") == muon::Rule::adamw);
  CHECK(opt.rule_of("lm_head.weight") == muon::Rule::adamw);

  auto table = m.table();
  table[1].rule = muon::Rule::adamw;
  CHECK(Opt(table).rule_of("model.layers.0.self_attn.q_proj.weight") == muon::Rule::adamw);
  table[3].rule = muon::Rule::muon;  // a 1-D norm cannot go to Muon
  CHECK_THROWS_WITH_AS(Opt{table}, doctest::Contains("model.norm.weight"), muon::InvalidArgument);
}

TEST_CASE("a bad parameter table gets an error that names the problem") {
  CHECK_THROWS_WITH_AS(Opt({}), doctest::Contains("parameter table is empty"), muon::InvalidArgument);
  Model m;
  auto table = m.table();
  table[2].grad.shape = {4, 16, 12};
  CHECK_THROWS_WITH_AS(Opt{table}, doctest::Contains("model.layers.0.mlp.experts"), muon::ShapeMismatch);
  table = m.table();
  table[4].name = table[0].name;
  CHECK_THROWS_WITH_AS(Opt{table}, doctest::Contains("appears twice"), muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(Opt(m.table(), {.lr = -1.0}), doctest::Contains("Options.lr"), muon::InvalidArgument);
  CHECK_THROWS_WITH_AS(Opt(m.table(), {.adamw = {.beta2 = 1.0f}}), doctest::Contains("adamw.beta2"),
                       muon::InvalidArgument);
}

TEST_CASE("a non-finite gradient fails the step by default and changes nothing") {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    Model a, b;
    Opt oa(a.table()), ob(b.table());
    train(a, oa, 2);
    train(b, ob, 2);
    b.set_gradients(1000 + 10 * 2);
    b.dexperts[7] = bad;
    const auto before = b.values();
    CHECK_THROWS_WITH_AS((void)ob.step(), doctest::Contains("model.layers.0.mlp.experts"), muon::NonFiniteGradient);
    CHECK(b.values() == before);
    CHECK(ob.step_count() == 2);
    // The state is untouched too: the next good steps match a run that never saw the bad one.
    train(a, oa, 2);
    train(b, ob, 2);
    CHECK(a.values() == b.values());
  }
}

TEST_CASE("OnNonFinite::skip skips the step, counts it and changes nothing") {
  Model m;
  Opt opt(m.table(), {.on_non_finite = muon::OnNonFinite::skip});
  m.dnorm[0] = std::numeric_limits<float>::quiet_NaN();
  const auto before = m.values();
  const auto report = opt.step();
  CHECK(report.skipped);
  CHECK(opt.skipped_steps() == 1);
  CHECK(opt.step_count() == 0);
  CHECK(m.values() == before);
}

TEST_CASE("a zero gradient gives a zero update, with NorMuon too: only the decay moves the weights") {
  for (const bool normuon : {false, true}) {
    CAPTURE(normuon);
    Model m;
    for (auto* g : {&m.demb, &m.dq, &m.dexperts, &m.dnorm, &m.dhead}) std::fill(g->begin(), g->end(), 0.0f);
    const auto before = m.values();
    Opt opt(m.table(), {.lr = 0.01, .weight_decay = 0.1, .muon = {.normuon = {.enabled = normuon}}});
    (void)opt.step();
    const auto after = m.values();
    for (std::size_t t = 0; t < before.size(); ++t)
      for (std::size_t i = 0; i < before[t].size(); ++i) {
        REQUIRE(std::isfinite(after[t][i]));
        CHECK(after[t][i] == doctest::Approx(before[t][i] * (1.0f - 0.01f * 0.1f)).epsilon(1e-6));
      }
  }
}

TEST_CASE("the Muon update has AdamW's RMS: 0.2 x lr for an orthogonal update") {
  Model m;
  const auto q0 = m.q;
  const double lr = 0.01;
  Opt opt(m.table(), {.lr = lr, .weight_decay = 0.0});
  (void)opt.step();
  double ss = 0.0;
  for (std::size_t i = 0; i < q0.size(); ++i) ss += std::pow(double{m.q[i]} - q0[i], 2);
  // RMS(O)·√max(A,B) = RMS of O's singular values, which Keller's schedule puts in (0.68, 1.14).
  const double rms = std::sqrt(ss / static_cast<double>(q0.size()));
  CHECK(rms > 0.68 * 0.2 * lr);
  CHECK(rms < 1.14 * 0.2 * lr);
}

TEST_CASE("global-norm clipping scales every gradient by torch's factor and reports the norm") {
  Model a, b;
  Opt clipped(a.table(), {.lr = 0.01, .max_grad_norm = 1.0});
  const auto report = clipped.step();
  double ss = 0.0;
  for (const auto* g : {&b.demb, &b.dq, &b.dexperts, &b.dnorm, &b.dhead})
    for (float v : *g) ss += double{v} * v;
  CHECK(report.grad_norm == doctest::Approx(std::sqrt(ss)).epsilon(1e-12));
  CHECK(report.grad_scale == doctest::Approx(1.0 / (std::sqrt(ss) + 1e-6)));
  // The same step with the gradients pre-scaled by that factor and no clipping.
  for (auto* g : {&b.demb, &b.dq, &b.dexperts, &b.dnorm, &b.dhead})
    for (float& v : *g) v = static_cast<float>(v * report.grad_scale);
  Opt plain(b.table(), {.lr = 0.01});
  (void)plain.step();
  for (std::size_t t = 0; t < 5; ++t)
    for (std::size_t i = 0; i < a.values()[t].size(); ++i)
      CHECK(a.values()[t][i] == doctest::Approx(b.values()[t][i]).epsilon(1e-5));
}

TEST_CASE("per-group overrides: lr and weight decay of one rule leave the other alone") {
  Model m;
  const auto before = m.values();
  Opt opt(m.table(), {.lr = 0.01, .muon_group = {.lr = 0.0, .weight_decay = 0.0}});
  (void)opt.step();
  CHECK(m.q == before[1]);
  CHECK(m.experts == before[2]);
  CHECK(m.emb != before[0]);
}

TEST_CASE("learning-rate schedules: warmup then cosine, and warmup-stable-decay") {
  const muon::WarmupCosine cosine{.warmup_steps = 10, .total_steps = 110, .final_ratio = 0.1};
  CHECK(muon::lr_factor(cosine, 0) == doctest::Approx(0.1));
  CHECK(muon::lr_factor(cosine, 9) == doctest::Approx(1.0));
  CHECK(muon::lr_factor(cosine, 60) == doctest::Approx(0.55));
  CHECK(muon::lr_factor(cosine, 110) == doctest::Approx(0.1));
  CHECK(muon::lr_factor(cosine, 500) == doctest::Approx(0.1));
  const muon::WarmupStableDecay wsd{.warmup_steps = 4, .stable_steps = 10, .decay_steps = 5, .final_ratio = 0.0};
  CHECK(muon::lr_factor(wsd, 1) == doctest::Approx(0.5));
  CHECK(muon::lr_factor(wsd, 13) == doctest::Approx(1.0));
  CHECK(muon::lr_factor(wsd, 14) == doctest::Approx(0.8));
  CHECK(muon::lr_factor(wsd, 18) == doctest::Approx(0.0));
  Model m;
  Opt opt(m.table(), {.lr = 0.01, .schedule = cosine});
  CHECK(opt.step().lr == doctest::Approx(0.001));
  CHECK(opt.step().lr == doctest::Approx(0.002));
  CHECK_THROWS_AS(Opt(m.table(), {.schedule = muon::WarmupCosine{.warmup_steps = 5, .total_steps = 5}}),
                  muon::InvalidArgument);
}

TEST_CASE("save then load resumes bit-identically to an uninterrupted run") {
  const muon::Options options{.lr = 0.02, .schedule = muon::WarmupCosine{.warmup_steps = 2, .total_steps = 8},
                              .max_grad_norm = 5.0};
  const Resumed r = save_and_resume(options, {.lr = 123.0}, "resume.safetensors");
  CHECK(r.loaded_step == 3);
  CHECK(r.loaded_options.lr == 0.02);
  CHECK(r.resumed.values() == r.uninterrupted.values());
}

TEST_CASE("schedules stay finite and in [0, 1] at every step up to 2^53, and longer ones are refused") {
  const std::int64_t limit = muon::kMaxStepCount;
  const std::vector<muon::LrSchedule> schedules{
      muon::ConstantLr{},
      muon::WarmupCosine{.warmup_steps = 0, .total_steps = 1, .final_ratio = 0.0},
      muon::WarmupCosine{.warmup_steps = limit - 1, .total_steps = limit, .final_ratio = 1.0},
      muon::WarmupStableDecay{.warmup_steps = limit, .stable_steps = limit, .decay_steps = limit, .final_ratio = 0.0},
      muon::WarmupStableDecay{.warmup_steps = 0, .stable_steps = 0, .decay_steps = 1, .final_ratio = 0.5}};
  for (const muon::LrSchedule& s : schedules) {
    muon::validate(s);
    for (const std::int64_t k : {std::int64_t{0}, std::int64_t{1}, limit / 2, limit - 2, limit - 1, limit}) {
      const double f = muon::lr_factor(s, k);
      CAPTURE(k);
      CHECK(std::isfinite(f));
      CHECK(f >= 0.0);
      CHECK(f <= 1.0);
    }
  }
  CHECK_THROWS_WITH_AS(muon::validate(muon::LrSchedule{muon::WarmupStableDecay{.stable_steps = 2 * limit}}),
                       doctest::Contains("stable_steps must be finite and in [0, 9.00719925e+15]"), muon::InvalidArgument);
}

TEST_CASE("a saved state whose step count is out of range is refused and changes nothing") {
  Model m;
  Opt opt(m.table());
  train(m, opt, 1);
  const muon::SavedState good = opt.export_state();
  for (const std::int64_t step : {std::int64_t{-5}, std::numeric_limits<std::int64_t>::max()}) {
    muon::SavedState bad = good;
    bad.step = step;
    Opt fresh(Model{}.table());
    const std::string expected = "step is " + std::to_string(step);
    CHECK_THROWS_WITH_AS(fresh.import_state(bad, "bad"), doctest::Contains(expected.c_str()), muon::StateMismatch);
    CHECK(fresh.step_count() == 0);
  }
}

TEST_CASE("load rejects a state that does not match the table, naming the first mismatch, and changes nothing") {
  const auto path = temp_path("mismatch.safetensors");
  Model m;
  Opt opt(m.table());
  train(m, opt, 1);
  muon::save_state(opt, path);

  Model other;
  auto table = other.table();
  table[1].name = "model.layers.0.self_attn.q_a_proj.weight";
  Opt renamed(table);
  CHECK_THROWS_WITH_AS(muon::load_state(renamed, path), doctest::Contains("q_a_proj.weight/momentum' is missing"),
                       muon::StateMismatch);
  CHECK(renamed.step_count() == 0);

  std::vector<float> q2(16 * 24), dq2(16 * 24);
  table = other.table();
  table[1].value = {q2.data(), {16, 24}};
  table[1].grad = {dq2.data(), {16, 24}};
  Opt reshaped(table);
  CHECK_THROWS_WITH_AS(muon::load_state(reshaped, path), doctest::Contains("has shape [24, 16], the parameter has [16, 24]"),
                       muon::StateMismatch);

  table = other.table();
  table[1].rule = muon::Rule::adamw;
  Opt rerouted(table);
  CHECK_THROWS_WITH_AS(muon::load_state(rerouted, path), doctest::Contains("q_proj.weight/exp_avg' is missing"), muon::StateMismatch);

  table = other.table();
  table.pop_back();
  Opt smaller(table);
  CHECK_THROWS_WITH_AS(muon::load_state(smaller, path), doctest::Contains("'lm_head.weight/exp_avg' matches no parameter"),
                       muon::StateMismatch);

  // A truncated file is a FileError naming the file.
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 4);
  Opt fresh(other.table());
  CHECK_THROWS_WITH_AS(muon::load_state(fresh, path), doctest::Contains(path.filename().string().c_str()), muon::FileError);
  std::filesystem::remove(path);
}

namespace {

const muon::Options kNorMuon{.lr = 0.02, .muon = {.normuon = {.enabled = true}}};

std::vector<std::string> names_of(const muon::SavedState& s) {
  std::vector<std::string> out;
  for (const muon::StateTensor& t : s.tensors) out.push_back(t.name + " " + muon::to_string(t.shape));
  return out;
}

}  // namespace

TEST_CASE("NorMuon keeps one second moment per row of each matrix, per expert for a stack") {
  Model m;
  Opt opt(m.table(), kNorMuon);
  train(m, opt, 1);
  const auto names = names_of(opt.export_state());
  const auto has = [&](const std::string& name) { return std::find(names.begin(), names.end(), name) != names.end(); };
  CHECK(has("model.layers.0.self_attn.q_proj.weight/normuon_v [24]"));
  CHECK(has("model.layers.0.mlp.experts/normuon_v [4, 12]"));
  CHECK(!has("model.embed_tokens.weight/normuon_v [40]"));  // AdamW parameters have none
  CHECK(opt.state_elements() == Opt(Model{}.table()).state_elements() + 24 + 4 * 12);
}

TEST_CASE("NorMuon's update has RMS 0.2 x lr exactly, whatever Newton-Schulz leaves of the singular values") {
  Model m;
  const auto q0 = m.q;
  const double lr = 0.01;
  Opt opt(m.table(), {.lr = lr, .weight_decay = 0.0, .muon = {.normuon = {.enabled = true}}});
  (void)opt.step();
  double ss = 0.0;
  for (std::size_t i = 0; i < q0.size(); ++i) ss += std::pow(double{m.q[i]} - q0[i], 2);
  // The rescale to √min(rows, cols) makes 0.2·√max·√min/√(rows·cols) = 0.2: fp32 rounding only.
  CHECK(std::sqrt(ss / static_cast<double>(q0.size())) == doctest::Approx(0.2 * lr).epsilon(1e-5));
}

TEST_CASE("NorMuon: save then load resumes bit-identically to an uninterrupted run") {
  muon::Options options = kNorMuon;
  options.schedule = muon::WarmupCosine{.warmup_steps = 2, .total_steps = 8};
  options.max_grad_norm = 5.0;
  const Resumed r =
      save_and_resume(options, {.lr = 123.0, .muon = {.normuon = {.enabled = true}}}, "normuon_resume.safetensors");
  CHECK(r.loaded_options.muon.normuon.beta2 == 0.95f);
  CHECK(r.resumed.values() == r.uninterrupted.values());
  // And NorMuon did something: the same run without it ends elsewhere.
  Model plain;
  options.muon.normuon.enabled = false;
  Opt muon_only(plain.table(), options);
  train(plain, muon_only, 6);
  CHECK(plain.values() != r.uninterrupted.values());
}

TEST_CASE("NorMuon's switch decides the state: a state or options with the other switch are refused, naming the parameter") {
  Model m;
  Opt on(m.table(), kNorMuon), off(m.table(), {.lr = 0.02});
  train(m, on, 1);
  train(m, off, 1);
  const muon::SavedState with_v = on.export_state(), without_v = off.export_state();

  Opt fresh_on(Model{}.table(), kNorMuon);
  CHECK_THROWS_WITH_AS(fresh_on.import_state(without_v, "plain.safetensors"),
                       doctest::Contains("tensor 'model.layers.0.self_attn.q_proj.weight/normuon_v' is missing (parameter "
                                         "'model.layers.0.self_attn.q_proj.weight' has no saved normuon_v); NorMuon is on"),
                       muon::StateMismatch);
  CHECK(fresh_on.step_count() == 0);
  Opt fresh_off(Model{}.table());
  CHECK_THROWS_WITH_AS(fresh_off.import_state(with_v, "normuon.safetensors"),
                       doctest::Contains("'model.layers.0.self_attn.q_proj.weight/normuon_v' matches no parameter of this "
                                         "optimizer (NorMuon is off in this optimizer)"),
                       muon::StateMismatch);
  // The tensors of one switch with the options of the other: refused too.
  muon::SavedState mixed = with_v;
  mixed.options.muon.normuon.enabled = false;
  CHECK_THROWS_WITH_AS(fresh_on.import_state(mixed, "mixed"), doctest::Contains("normuon.enabled cannot change"),
                       muon::StateMismatch);
  // A wrong v shape names the buffer.
  muon::SavedState reshaped = with_v;
  for (muon::StateTensor& t : reshaped.tensors)
    if (t.name == "model.layers.0.mlp.experts/normuon_v") t.shape = {48};
  CHECK_THROWS_WITH_AS(fresh_on.import_state(reshaped, "reshaped"),
                       doctest::Contains("has shape [48], the parameter's normuon_v has [4, 12]"), muon::StateMismatch);
  CHECK_THROWS_WITH_AS(on.set_options({.lr = 0.02}), doctest::Contains("MuonOptions.normuon.enabled cannot change from true to false"),
                       muon::InvalidArgument);
  CHECK(on.options().muon.normuon.enabled);
}
