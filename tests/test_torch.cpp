// The LibTorch adapter: parity with the core's Eigen backend and with the torch.optim fixtures,
// clear errors, NaN handling as in the core, and a bit-exact resume through torch::save/load.
#include <filesystem>
#include <limits>
#include <muon/backends/eigen.hpp>
#include <muon/io/safetensors.hpp>
#include <muon/libtorch/muon.hpp>

// LibTorch brings glog, whose CHECK macro would silently replace doctest's: use doctest's
// prefixed names only.
#define DOCTEST_CONFIG_NO_SHORT_MACRO_NAMES
#include <doctest/doctest.h>

#include "custom_options.hpp"

namespace {

using muon::libtorch::MuonOptions;

// A hidden matrix, an expert stack and a bias; gradients are fresh per step from a seed.
struct Net {
  std::vector<::torch::Tensor> params;
  explicit Net(std::uint64_t seed) {
    ::torch::manual_seed(seed);
    params = {::torch::randn({24, 16}) * 0.1, ::torch::randn({3, 12, 16}) * 0.1, ::torch::zeros({16})};
  }
  void set_gradients(std::uint64_t seed) {
    ::torch::manual_seed(seed);
    for (auto& p : params) p.mutable_grad() = ::torch::randn(p.sizes());
  }
  std::vector<::torch::optim::OptimizerParamGroup> groups(const MuonOptions& o) {
    auto m = std::make_unique<MuonOptions>(o);
    m->role(muon::Rule::muon);
    auto a = std::make_unique<MuonOptions>(o);
    a->role(muon::Rule::adamw);
    std::vector<::torch::optim::OptimizerParamGroup> g;
    g.emplace_back(std::vector<::torch::Tensor>{params[0], params[1]}, std::move(m));
    g.emplace_back(std::vector<::torch::Tensor>{params[2]}, std::move(a));
    return g;
  }
};

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("muon_torch_" + std::to_string(::getpid()) + "_" + name);
}

}  // namespace

DOCTEST_TEST_CASE("the adapter equals the core's Eigen backend on the same data") {
  Net net(1);
  std::vector<float> w0(24 * 16), w1(3 * 12 * 16), b(16), g0(w0.size()), g1(w1.size()), gb(b.size());
  const auto copy_in = [](const ::torch::Tensor& t, std::vector<float>& v) {
    std::copy(t.data_ptr<float>(), t.data_ptr<float>() + t.numel(), v.begin());
  };
  copy_in(net.params[0], w0);
  copy_in(net.params[1], w1);
  copy_in(net.params[2], b);
  const MuonOptions options = MuonOptions(0.02).weight_decay(0.1);
  muon::libtorch::Muon adapter(net.groups(options));
  muon::Optimizer<muon::EigenBackend> core({{"w", muon::Role::matrix, {w0.data(), {24, 16}}, {g0.data(), {24, 16}}},
                                            {"e", muon::Role::matrix, {w1.data(), {3, 12, 16}}, {g1.data(), {3, 12, 16}}},
                                            {"b", muon::Role::bias, {b.data(), {16}}, {gb.data(), {16}}}},
                                           options.core(),
                                           // fp32, as the adapter's LibTorch products
                                           muon::EigenBackend({.ns_precision = muon::NsPrecision::fp32}));
  for (int step = 0; step < 3; ++step) {
    net.set_gradients(100 + step);
    copy_in(net.params[0].grad(), g0);
    copy_in(net.params[1].grad(), g1);
    copy_in(net.params[2].grad(), gb);
    adapter.step();
    (void)core.step();
  }
  // Same rules, other products (torch's GEMMs against OpenBLAS's SYRK): fp32 rounding only,
  // on values of O(0.1).
  for (auto [t, v] : {std::pair{&net.params[0], &w0}, {&net.params[1], &w1}, {&net.params[2], &b}})
    for (std::size_t i = 0; i < v->size(); ++i) DOCTEST_CHECK(t->data_ptr<float>()[i] == doctest::Approx((*v)[i]).epsilon(1e-5));
}

DOCTEST_TEST_CASE("the adapter matches the torch.optim.Muon and torch.optim.AdamW fixtures") {
  int cases = 0;
  for (const auto& entry : std::filesystem::directory_iterator(MUON_FIXTURE_DIR)) {
    const std::string file_name = entry.path().filename().string();
    const bool muon_case = file_name.starts_with("torch_muon_") && file_name.ends_with("_f64.safetensors");
    const bool adamw_case = file_name.starts_with("torch_adamw_") && file_name.ends_with("_f32.safetensors");
    if (!muon_case && !adamw_case) continue;
    ++cases;
    DOCTEST_CAPTURE(file_name);
    const auto file = muon::safetensors::File::open(entry.path());
    const auto& meta = file.metadata();
    auto w0 = file.to_float("W0");
    const auto shape = file.info("W0").shape;
    auto param = ::torch::from_blob(w0.data(), shape, ::torch::kFloat).clone();
    const auto initial = param.clone();
    MuonOptions o = MuonOptions(std::stod(meta.at("lr"))).weight_decay(std::stod(meta.at("weight_decay")));
    if (muon_case) {
      o.core().muon.momentum_form = muon::MomentumForm::ema;
      o.core().muon.ns.eps_mode = muon::NormEps::max;
      o.core().muon.scale = meta.at("scale_mode") == "keller" ? muon::ScaleMode::keller : muon::ScaleMode::match_adamw_rms;
    } else {
      o.role(muon::Rule::adamw);
    }
    muon::libtorch::Muon opt(std::vector<::torch::Tensor>{param}, o);
    double worst = 0.0;
    for (int t = 1; t <= 5; ++t) {
      auto g = file.to_float("G" + std::to_string(t));
      param.mutable_grad() = ::torch::from_blob(g.data(), shape, ::torch::kFloat).clone();
      opt.step();
      auto expected = file.to_float("W" + std::to_string(t));
      const auto ref = ::torch::from_blob(expected.data(), shape, ::torch::kFloat).to(::torch::kDouble);
      const double err = (param.to(::torch::kDouble) - ref).norm().item<double>() /
                         (ref - initial.to(::torch::kDouble)).norm().item<double>();
      worst = std::max(worst, err);
    }
    // As in test_reference.cpp: fp32 against the float64 torch.optim.Muon run (seen ~1e-6), and
    // fp32 against torch's own fp32 AdamW.
    DOCTEST_CHECK(worst < (muon_case ? 1e-5 : 2e-6));
  }
  DOCTEST_CHECK(cases == 8);  // 6 torch.optim.Muon runs, 2 AdamW runs
}

DOCTEST_TEST_CASE("a parameter Muon cannot take, or a sparse gradient, gets a clear error") {
  auto vec = ::torch::zeros({8});
  vec.mutable_grad() = ::torch::ones({8});
  muon::libtorch::Muon one_d(std::vector<::torch::Tensor>{vec});
  DOCTEST_CHECK_THROWS_WITH_AS(one_d.step(), doctest::Contains("group0.param0"), muon::InvalidArgument);

  auto emb = ::torch::zeros({10, 4});
  emb.mutable_grad() = ::torch::zeros({10, 4}).to_sparse();
  muon::libtorch::Muon sparse(std::vector<::torch::Tensor>{emb}, MuonOptions().role(muon::Rule::adamw));
  DOCTEST_CHECK_THROWS_WITH_AS(sparse.step(), doctest::Contains("sparse gradient"), muon::InvalidArgument);

  auto half = ::torch::zeros({4, 4}, ::torch::kDouble);
  half.mutable_grad() = ::torch::ones({4, 4}, ::torch::kDouble);
  muon::libtorch::Muon f64(std::vector<::torch::Tensor>{half});
  DOCTEST_CHECK_THROWS_WITH_AS(f64.step(), doctest::Contains("float32"), muon::InvalidArgument);
}

DOCTEST_TEST_CASE("a NaN gradient in any group rejects the whole step and changes nothing") {
  Net net(2);
  muon::libtorch::Muon opt(net.groups(MuonOptions(0.02)));
  net.set_gradients(7);
  opt.step();
  net.set_gradients(8);
  net.params[2].mutable_grad()[3] = std::numeric_limits<float>::quiet_NaN();  // in the second group
  std::vector<::torch::Tensor> before;
  for (auto& p : net.params) before.push_back(p.clone());
  DOCTEST_CHECK_THROWS_AS(opt.step(), muon::NonFiniteGradient);
  for (std::size_t i = 0; i < before.size(); ++i) DOCTEST_CHECK(::torch::equal(before[i], net.params[i]));
}

DOCTEST_TEST_CASE("a NaN step is skipped and counted once when the defaults say OnNonFinite::skip") {
  Net net(4);
  muon::Options core{.lr = 0.02};
  core.on_non_finite = muon::OnNonFinite::skip;
  muon::libtorch::Muon opt(net.groups(MuonOptions(core)), MuonOptions(core));
  net.set_gradients(9);
  net.params[0].mutable_grad()[0][0] = std::numeric_limits<float>::quiet_NaN();
  std::vector<::torch::Tensor> before;
  for (auto& p : net.params) before.push_back(p.clone());
  opt.step();
  DOCTEST_CHECK(opt.skipped_steps() == 1);
  DOCTEST_CHECK(opt.step_count() == 0);
  for (std::size_t i = 0; i < before.size(); ++i) DOCTEST_CHECK(::torch::equal(before[i], net.params[i]));
}

DOCTEST_TEST_CASE("torch::save and torch::load resume bit-exactly and restore the group options") {
  const auto path = temp_path("resume.pt");
  const MuonOptions options = MuonOptions(0.02).weight_decay(0.1);
  Net full(3), first(3);
  muon::libtorch::Muon uninterrupted(full.groups(options)), before(first.groups(options));
  for (int step = 0; step < 4; ++step) {
    full.set_gradients(50 + step);
    uninterrupted.step();
  }
  for (int step = 0; step < 2; ++step) {
    first.set_gradients(50 + step);
    before.step();
  }
  ::torch::save(before, path.string());
  Net resumed(3);
  for (std::size_t i = 0; i < resumed.params.size(); ++i) resumed.params[i].copy_(first.params[i]);
  muon::libtorch::Muon after(resumed.groups(MuonOptions(5.0)));  // loading replaces these options
  ::torch::load(after, path.string());
  DOCTEST_CHECK(static_cast<MuonOptions&>(after.param_groups()[0].options()).lr() == 0.02);
  for (int step = 2; step < 4; ++step) {
    resumed.set_gradients(50 + step);
    after.step();
  }
  for (std::size_t i = 0; i < full.params.size(); ++i) DOCTEST_CHECK(::torch::equal(full.params[i], resumed.params[i]));
  std::filesystem::remove(path);
}

DOCTEST_TEST_CASE("group options round-trip through torch::save and torch::load, every field") {
  const auto path = temp_path("options.pt");
  Net net(3), other(3);
  muon::libtorch::Muon saved(net.groups(MuonOptions(muon::test::custom_options())));
  net.set_gradients(5);
  saved.step();
  ::torch::save(saved, path.string());
  muon::libtorch::Muon loaded(other.groups(MuonOptions(1.0)));
  ::torch::load(loaded, path.string());
  DOCTEST_CHECK(loaded.step_count() == 1);
  for (auto& group : loaded.param_groups())
    DOCTEST_CHECK(
        muon::test::differing_fields(static_cast<MuonOptions&>(group.options()).core(), muon::test::custom_options())
            .empty());
  std::filesystem::remove(path);
}

DOCTEST_TEST_CASE("moonlight_param_groups routes by Moonlight's policy, with patterns the user can change") {
  struct Tiny : ::torch::nn::Module {
    Tiny() {
      register_module("embed_tokens", ::torch::nn::Embedding(50, 8));
      register_module("up_proj", ::torch::nn::Linear(8, 16));  // weight 2-D -> Muon, bias 1-D -> AdamW
      register_module("norm", ::torch::nn::LayerNorm(::torch::nn::LayerNormOptions({8})));
      register_module("lm_head", ::torch::nn::Linear(::torch::nn::LinearOptions(8, 50).bias(false)));
    }
  } tiny;
  const auto groups = muon::libtorch::moonlight_param_groups(tiny, MuonOptions(1e-3));
  DOCTEST_REQUIRE(groups.size() == 2);
  DOCTEST_CHECK(static_cast<const MuonOptions&>(groups[0].options()).role() == muon::Rule::muon);
  DOCTEST_CHECK(groups[0].params().size() == 1);  // up_proj.weight
  DOCTEST_CHECK(groups[0].params()[0].sizes().vec() == std::vector<std::int64_t>{16, 8});
  DOCTEST_CHECK(static_cast<const MuonOptions&>(groups[1].options()).role() == muon::Rule::adamw);
  DOCTEST_CHECK(groups[1].params().size() == 5);  // embedding, up_proj.bias, norm weight and bias, lm_head
  const auto all_muon = muon::libtorch::moonlight_param_groups(tiny, MuonOptions(1e-3), {});
  DOCTEST_CHECK(all_muon[0].params().size() == 3);  // no name patterns: every 2-D tensor goes to Muon
}
