// The LibTorch adapter: parity with the core's Eigen backend and with the torch.optim fixtures,
// clear errors, NaN handling as in the core, and a bit-exact resume through torch::save/load.
#include <filesystem>
#include <limits>
#include <muon/backends/eigen.hpp>
#include <muon/io/safetensors.hpp>
#include <muon/libtorch/muon.hpp>
#include <muon/row_scale.hpp>

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

// Three steps of the adapter (`engine`) and of the core's Optimizer<EigenBackend> (`backend`) on
// the same table and gradients; calls compare(adapter's tensor, core's values) per parameter.
template <class Compare>
void run_against_core(muon::libtorch::EngineOptions engine, muon::EigenBackend backend, Compare compare,
                      bool normuon = false) {
  Net net(1);
  std::vector<float> w0(24 * 16), w1(3 * 12 * 16), b(16), g0(w0.size()), g1(w1.size()), gb(b.size());
  const auto copy_in = [](const ::torch::Tensor& t, std::vector<float>& v) {
    std::copy(t.data_ptr<float>(), t.data_ptr<float>() + t.numel(), v.begin());
  };
  copy_in(net.params[0], w0);
  copy_in(net.params[1], w1);
  copy_in(net.params[2], b);
  MuonOptions options = MuonOptions(0.02).weight_decay(0.1);
  options.core().muon.normuon.enabled = normuon;
  muon::libtorch::Muon adapter(net.groups(options), {}, engine);
  muon::Optimizer<muon::EigenBackend> core({{"w", muon::Role::matrix, {w0.data(), {24, 16}}, {g0.data(), {24, 16}}},
                                            {"e", muon::Role::matrix, {w1.data(), {3, 12, 16}}, {g1.data(), {3, 12, 16}}},
                                            {"b", muon::Role::bias, {b.data(), {16}}, {gb.data(), {16}}}},
                                           options.core(), std::move(backend));
  for (int step = 0; step < 3; ++step) {
    net.set_gradients(100 + step);
    copy_in(net.params[0].grad(), g0);
    copy_in(net.params[1].grad(), g1);
    copy_in(net.params[2].grad(), gb);
    adapter.step();
    (void)core.step();
  }
  DOCTEST_CHECK(adapter.engine() ==
                (engine.engine == muon::libtorch::Engine::automatic ? muon::libtorch::Engine::eigen : engine.engine));
  for (auto [t, v] : {std::pair{&net.params[0], &w0}, {&net.params[1], &w1}, {&net.params[2], &b}}) compare(*t, *v);
}

DOCTEST_TEST_CASE("on CPU float32 tensors the adapter runs the Eigen backend: bit for bit the core's step") {
  // The backends' default Newton–Schulz precision (bf16 on a CPU with bf16 instructions), and fp32.
  const auto same_bits = [](const ::torch::Tensor& t, const std::vector<float>& v) {
    DOCTEST_CHECK(std::equal(v.begin(), v.end(), t.data_ptr<float>()));
  };
  run_against_core({}, muon::EigenBackend(), same_bits);
  run_against_core({.ns_precision = muon::NsPrecision::fp32}, muon::EigenBackend({.ns_precision = muon::NsPrecision::fp32}),
                   same_bits);
}

DOCTEST_TEST_CASE("the LibTorch-ops fallback (Engine::torch) equals the core up to fp32 rounding") {
  // fp32 products, as LibTorch's; torch's GEMMs against OpenBLAS's SYRK differ in rounding only,
  // on values of O(0.1).
  run_against_core({.engine = muon::libtorch::Engine::torch}, muon::EigenBackend({.ns_precision = muon::NsPrecision::fp32}),
                   [](const ::torch::Tensor& t, const std::vector<float>& v) {
                     for (std::size_t i = 0; i < v.size(); ++i)
                       DOCTEST_CHECK(t.data_ptr<float>()[i] == doctest::Approx(v[i]).epsilon(1e-5));
                   });
}

// NorMuon's row normalisation: the Eigen engine is the core's own; the LibTorch-ops engine runs
// TorchBackend::normalize_rows, whose double sums round as the Eigen backend's.
DOCTEST_TEST_CASE("NorMuon through the adapter: bit for bit on the Eigen engine, fp32 rounding on LibTorch ops") {
  const muon::EigenBackend fp32({.ns_precision = muon::NsPrecision::fp32});
  run_against_core({.ns_precision = muon::NsPrecision::fp32}, fp32,
                   [](const ::torch::Tensor& t, const std::vector<float>& v) {
                     DOCTEST_CHECK(std::equal(v.begin(), v.end(), t.data_ptr<float>()));
                   },
                   true);
  run_against_core({.engine = muon::libtorch::Engine::torch}, fp32,
                   [](const ::torch::Tensor& t, const std::vector<float>& v) {
                     for (std::size_t i = 0; i < v.size(); ++i)
                       DOCTEST_CHECK(t.data_ptr<float>()[i] == doctest::Approx(v[i]).epsilon(1e-5));
                   },
                   true);
}

DOCTEST_TEST_CASE("the adapter matches the torch.optim.Muon and torch.optim.AdamW fixtures") {
  int cases = 0;
  for (const auto engine : {muon::libtorch::Engine::automatic, muon::libtorch::Engine::torch})
  for (const auto& entry : std::filesystem::directory_iterator(MUON_FIXTURE_DIR)) {
    const std::string file_name = entry.path().filename().string();
    const bool muon_case = file_name.starts_with("torch_muon_") && file_name.ends_with("_f64.safetensors");
    const bool adamw_case = file_name.starts_with("torch_adamw_") && file_name.ends_with("_f32.safetensors");
    if (!muon_case && !adamw_case) continue;
    ++cases;
    DOCTEST_CAPTURE(file_name);
    const std::string engine_name = muon::libtorch::to_string(engine);
    DOCTEST_CAPTURE(engine_name);
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
    // fp32 products: the fixtures are fp32 and float64 runs.
    muon::libtorch::Muon opt(std::vector<::torch::Tensor>{param}, o, {.engine = engine, .ns_precision = muon::NsPrecision::fp32});
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
  DOCTEST_CHECK(cases == 2 * 8);  // 6 torch.optim.Muon runs, 2 AdamW runs, on both engines
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

  auto strided = ::torch::zeros({4, 8}).t();
  muon::libtorch::Muon transposed(std::vector<::torch::Tensor>{strided});
  DOCTEST_CHECK_THROWS_WITH_AS(transposed.step(), doctest::Contains("group0.param0 is not contiguous"),
                               muon::InvalidArgument);
}

DOCTEST_TEST_CASE("float64, bfloat16 and float16 parameters are rejected by name and dtype, on every engine") {
  for (const auto engine : {muon::libtorch::Engine::automatic, muon::libtorch::Engine::torch})
    for (const auto& [dtype, name] : {std::pair{::torch::kDouble, "Double"}, {::torch::kBFloat16, "BFloat16"},
                                      {::torch::kHalf, "Half"}}) {
      DOCTEST_CAPTURE(name);
      auto fine = ::torch::zeros({4, 4});
      auto p = ::torch::zeros({4, 4}, dtype);
      p.mutable_grad() = ::torch::ones({4, 4}, dtype);
      muon::libtorch::Muon opt(std::vector<::torch::Tensor>{fine, p}, {}, {.engine = engine});
      const std::string message = std::string("parameter group0.param1 is ") + name;
      DOCTEST_CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains(message.c_str()), muon::InvalidArgument);
      DOCTEST_CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains("float32"), muon::InvalidArgument);
      DOCTEST_CHECK(opt.step_count() == 0);
      DOCTEST_CHECK(::torch::equal(p, ::torch::zeros({4, 4}, dtype)));
    }
}

DOCTEST_TEST_CASE("an engine that cannot take the parameters is refused with the reason") {
  auto on_meta = ::torch::empty({4, 4}, ::torch::TensorOptions().device(::torch::kMeta));
  muon::libtorch::Muon eigen(std::vector<::torch::Tensor>{on_meta}, {}, {.engine = muon::libtorch::Engine::eigen});
  DOCTEST_CHECK_THROWS_WITH_AS(eigen.step(), doctest::Contains("Engine::eigen needs every parameter on the CPU"),
                               muon::InvalidArgument);
#if !MUON_LIBTORCH_CUDA
  auto cpu = ::torch::zeros({4, 4});
  DOCTEST_CHECK_THROWS_WITH_AS(muon::libtorch::Muon(std::vector<::torch::Tensor>{cpu}, {}, {.engine = muon::libtorch::Engine::cuda}),
                               doctest::Contains("Engine::cuda"), muon::InvalidArgument);
#endif
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

DOCTEST_TEST_CASE("torch::save and torch::load resume, on the same engine bit-exactly, across engines within fp32 rounding") {
  using muon::libtorch::Engine;
  const std::pair<Engine, Engine> engines[] = {
      {Engine::automatic, Engine::automatic}, {Engine::automatic, Engine::torch}, {Engine::torch, Engine::automatic}};
  for (const auto& [from, to] : engines) {
    const std::string from_name = muon::libtorch::to_string(from), to_name = muon::libtorch::to_string(to);
    DOCTEST_CAPTURE(from_name);
    DOCTEST_CAPTURE(to_name);
    const muon::libtorch::EngineOptions save_engine{.engine = from, .ns_precision = muon::NsPrecision::fp32},
        load_engine{.engine = to, .ns_precision = muon::NsPrecision::fp32};
    const auto path = temp_path("resume.pt");
    const MuonOptions options = MuonOptions(0.02).weight_decay(0.1);
    Net full(3), first(3);
    muon::libtorch::Muon uninterrupted(full.groups(options), {}, save_engine), before(first.groups(options), {}, save_engine);
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
    muon::libtorch::Muon after(resumed.groups(MuonOptions(5.0)), {}, load_engine);  // loading replaces these options
    ::torch::load(after, path.string());
    DOCTEST_CHECK(static_cast<MuonOptions&>(after.param_groups()[0].options()).lr() == 0.02);
    DOCTEST_CHECK(after.step_count() == 2);
    DOCTEST_CHECK(after.engine() == (to == Engine::automatic ? Engine::eigen : to));
    for (int step = 2; step < 4; ++step) {
      resumed.set_gradients(50 + step);
      after.step();
    }
    for (std::size_t i = 0; i < full.params.size(); ++i) {
      if (from == to)
        DOCTEST_CHECK(::torch::equal(full.params[i], resumed.params[i]));
      else  // other products after the load (SYRK against GEMM): fp32 rounding only
        DOCTEST_CHECK(::torch::allclose(full.params[i], resumed.params[i], 1e-5, 1e-6));
    }
    std::filesystem::remove(path);
  }
}

DOCTEST_TEST_CASE("group options round-trip through torch::save and torch::load, every field") {
  const auto path = temp_path("options.pt");
  Net net(3), other(3);
  muon::libtorch::Muon saved(net.groups(MuonOptions(muon::test::custom_options())));
  net.set_gradients(5);
  saved.step();
  ::torch::save(saved, path.string());
  muon::Options receiving = muon::test::normuon_on();
  receiving.lr = 1.0;
  muon::libtorch::Muon loaded(other.groups(MuonOptions(receiving)));
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

DOCTEST_TEST_CASE("scale_row_blocks on tensor memory: each block's rows times its factor, bit for bit, the rest untouched") {
  // QK-clip's weight surgery (muon/row_scale.hpp) through the adapter's backend.
  muon::libtorch::TorchBackend backend;
  ::torch::manual_seed(3);
  auto w = ::torch::randn({12, 5});
  const std::vector<float> before(w.data_ptr<float>(), w.data_ptr<float>() + w.numel());
  const muon::RowBlockScale blocks[] = {{.first_row = 1, .rows = 2, .factor = 0.7310586f},
                                        {.first_row = 9, .rows = 3, .factor = 3.0f}};
  muon::scale_row_blocks(backend, std::span<float>(w.data_ptr<float>(), before.size()), 5, blocks);
  std::vector<float> expected = before;
  for (const muon::RowBlockScale& b : blocks)
    for (std::int64_t k = b.first_row * 5; k < (b.first_row + b.rows) * 5; ++k)
      expected[static_cast<std::size_t>(k)] = b.factor * before[static_cast<std::size_t>(k)];
  DOCTEST_CHECK(std::vector<float>(w.data_ptr<float>(), w.data_ptr<float>() + w.numel()) == expected);
}
