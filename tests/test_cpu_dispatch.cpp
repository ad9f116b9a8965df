// The run-time ISA dispatch of the CPU backend (muon/cpu/): every level this CPU supports against
// a plain double-precision loop and against the baseline level, and the determinism guarantees
// (a range's split does not change an element's bits; sums do not depend on the thread count).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <muon/backends/eigen.hpp>
#include <muon/cpu/elementwise.hpp>
#include <muon/cpu/isa.hpp>
#include <muon/muon.hpp>
#include "support.hpp"
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using muon::CpuIsa;
namespace cpu = muon::cpu;

std::vector<CpuIsa> supported_levels() {
  std::vector<CpuIsa> levels;
  std::string missing;
  for (const CpuIsa isa : muon::kAllCpuIsas) {
    if (muon::cpu_supports(isa))
      levels.push_back(isa);
    else
      missing += std::string(missing.empty() ? "" : ", ") + std::string(muon::to_string(isa));
  }
  if (!missing.empty()) MESSAGE("levels this CPU cannot run, so not tested here: " << missing);
  return levels;
}

// Each kernel is a few float operations per element; a level with FMA skips the rounding of a
// contracted product, which moves a result by at most a few ulp of the largest term involved.
// 4 ulp of the largest term (|w| and the update are O(1) here) is 2^-21 ≈ 4.8e-7.
constexpr double kUlps4 = 4.8e-7;

void check_close(const std::vector<float>& got, const std::vector<double>& want, double scale, const char* what) {
  REQUIRE(got.size() == want.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double{got[i]} - want[i]));
  INFO(what << ": worst error " << worst << " against the tolerance " << kUlps4 * scale);
  CHECK(worst <= kUlps4 * scale);
}

// An odd length, so that every level runs a zero-padded last vector.
constexpr std::size_t kN = 4099;

}  // namespace

TEST_CASE("the detected level is supported and the widest one supported") {
  const CpuIsa best = muon::detected_cpu_isa();
  CHECK(muon::cpu_supports(best));
  for (const CpuIsa isa : muon::kAllCpuIsas)
    if (muon::cpu_supports(isa)) CHECK(static_cast<int>(isa) <= static_cast<int>(best));
  MESSAGE("detected: " << muon::to_string(best) << "; bf16 instructions: " << muon::cpu_has_bf16_instructions());
  CHECK(muon::EigenBackend().isa() == best);
}

TEST_CASE("a level the CPU lacks is refused by name") {
  for (const CpuIsa isa : muon::kAllCpuIsas) {
    if (muon::cpu_supports(isa)) continue;
    const std::string name(muon::to_string(isa));
    CHECK_THROWS_WITH_AS(muon::EigenBackend(muon::EigenOptions{.isa = isa}), doctest::Contains(name.c_str()),
                         muon::InvalidArgument);
  }
}

TEST_CASE("every supported level computes AdamW, momentum, axpby, scale and Σx² as a double loop does") {
  const auto g = muon::test::random_uniform(kN, 1), w0 = muon::test::random_uniform(kN, 2), m0 = muon::test::random_uniform(kN, 3);
  const auto v0 = muon::test::random_uniform(kN, 4, 0.0f, 1.0f);
  const cpu::AdamWFactors af{.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step_size = 0.01f / 0.19f,
                             .decay = 1.0f - 0.01f * 0.1f, .bc2_sqrt = std::sqrt(1.0f - 0.95f * 0.95f),
                             .grad_scale = 0.5f};
  for (const CpuIsa isa : supported_levels()) {
    CAPTURE(muon::to_string(isa));
    const cpu::ElementwiseKernels& k = cpu::elementwise_kernels(isa);
    CHECK(k.isa == isa);

    auto w = w0, m = m0, v = v0;
    k.adamw(w.data(), g.data(), m.data(), v.data(), kN, af);
    std::vector<double> want_w(kN), want_m(kN), want_v(kN);
    for (std::size_t i = 0; i < kN; ++i) {
      const double gi = double{g[i]} * af.grad_scale;
      want_m[i] = m0[i] + (gi - m0[i]) * (1.0 - af.beta1);
      want_v[i] = v0[i] * double{af.beta2} + (1.0 - af.beta2) * gi * gi;
      want_w[i] = w0[i] * double{af.decay} -
                  af.step_size * (want_m[i] / (std::sqrt(want_v[i]) / af.bc2_sqrt + af.eps));
    }
    check_close(m, want_m, 2.0, "adamw m");
    check_close(v, want_v, 4.0, "adamw v");
    check_close(w, want_w, 8.0, "adamw w");

    for (const bool nesterov : {true, false}) {
      auto mm = m0;
      std::vector<float> u(kN, NAN);
      k.momentum(mm.data(), g.data(), u.data(), kN,
                 {.mu = 0.95f, .gain = 1.0f, .grad_scale = 0.5f, .nesterov = nesterov});
      std::vector<double> want_mm(kN), want_u(kN);
      for (std::size_t i = 0; i < kN; ++i) {
        want_mm[i] = 0.95 * m0[i] + 0.5 * g[i];
        want_u[i] = nesterov ? 0.5 * g[i] + 0.95 * want_mm[i] : want_mm[i];
      }
      check_close(mm, want_mm, 4.0, "momentum m");
      check_close(u, want_u, 8.0, "momentum u");
    }

    for (const float beta : {0.0f, 0.75f}) {
      std::vector<float> y = beta == 0.0f ? std::vector<float>(kN, NAN) : m0;  // β = 0: y is not read
      k.axpby(1.5f, g.data(), beta, y.data(), kN);
      std::vector<double> want(kN);
      for (std::size_t i = 0; i < kN; ++i) want[i] = 1.5 * g[i] + (beta == 0.0f ? 0.0 : beta * double{m0[i]});
      check_close(y, want, 4.0, "axpby");
    }

    auto x = g;
    k.scale(x.data(), kN, 0.3f);
    std::vector<double> want_x(kN);
    for (std::size_t i = 0; i < kN; ++i) want_x[i] = 0.3 * g[i];
    check_close(x, want_x, 1.0, "scale");

    double want_sum = 0.0;
    for (const float e : g) want_sum += double{e} * e;
    // n additions in double: at most n·2^-53 relative, 5e-13 for n = 4099.
    CHECK(std::abs(k.sum_squares(g.data(), kN) - want_sum) <= 5e-13 * want_sum);
  }
}

TEST_CASE("every supported level agrees with the baseline level on a whole optimizer step") {
  const std::size_t rows = 96, cols = 130;  // rows·cols not a multiple of any lane count
  const auto g0 = muon::test::random_uniform(rows * cols, 5), w0 = muon::test::random_uniform(rows * cols, 6);
  const auto e0 = muon::test::random_uniform(cols, 7), de0 = muon::test::random_uniform(cols, 8);
  std::vector<std::vector<float>> results;
  for (const CpuIsa isa : supported_levels()) {
    auto w = w0, g = g0, e = e0, de = de0;
    std::vector<muon::Parameter> params{
        {"w", muon::Role::matrix, {w.data(), {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(cols)}},
         {g.data(), {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(cols)}}},
        {"e", muon::Role::norm, {e.data(), {static_cast<std::int64_t>(cols)}},
         {de.data(), {static_cast<std::int64_t>(cols)}}}};
    muon::Optimizer<muon::EigenBackend> opt(params, {.lr = 0.02, .max_grad_norm = 1.0},
                                            muon::EigenBackend({.isa = isa}));
    for (int step = 0; step < 3; ++step) (void)opt.step();
    w.insert(w.end(), e.begin(), e.end());
    results.push_back(w);
  }
  // Newton–Schulz amplifies last-bit differences of its input somewhat (five polynomial
  // iterations); 1e-5 of the update scale (lr·0.2·√max(rows, cols) ≈ 0.046 per step) is far below
  // any change that matters and far above float rounding of the elementwise work.
  for (std::size_t level = 1; level < results.size(); ++level) {
    double worst = 0.0;
    for (std::size_t i = 0; i < results[0].size(); ++i)
      worst = std::max(worst, std::abs(double{results[level][i]} - results[0][i]));
    CAPTURE(level);
    CHECK(worst <= 1e-5);
  }
}

TEST_CASE("an element's result does not depend on where its range is split") {
  const auto g = muon::test::random_uniform(kN, 9), w0 = muon::test::random_uniform(kN, 10), m0 = muon::test::random_uniform(kN, 11);
  const auto v0 = muon::test::random_uniform(kN, 12, 0.0f, 1.0f);
  const cpu::AdamWFactors af{.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step_size = 0.05f, .decay = 0.999f,
                             .bc2_sqrt = 0.3f, .grad_scale = 1.0f};
  for (const CpuIsa isa : supported_levels()) {
    CAPTURE(muon::to_string(isa));
    const cpu::ElementwiseKernels& k = cpu::elementwise_kernels(isa);
    auto w1 = w0, m1 = m0, v1 = v0;
    k.adamw(w1.data(), g.data(), m1.data(), v1.data(), kN, af);
    for (const std::size_t split : {std::size_t{1}, std::size_t{7}, std::size_t{1000}, kN - 3}) {
      auto w2 = w0, m2 = m0, v2 = v0;
      k.adamw(w2.data(), g.data(), m2.data(), v2.data(), static_cast<std::int64_t>(split), af);
      k.adamw(w2.data() + split, g.data() + split, m2.data() + split, v2.data() + split,
              static_cast<std::int64_t>(kN - split), af);
      CAPTURE(split);
      CHECK(w2 == w1);
      CHECK(m2 == m1);
      CHECK(v2 == v1);
    }
  }
}

TEST_CASE("the backend's Σx² is the same whatever the thread count") {
  const auto x = muon::test::random_uniform((std::size_t{1} << 20) + 13, 13);
  muon::EigenBackend cpu;
  const double first = cpu.sum_squares(x);
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  for (const int t : {1, 2, 3}) {
    omp_set_num_threads(t);
    CHECK(cpu.sum_squares(x) == first);
  }
  omp_set_num_threads(threads);
#endif
  double want = 0.0;
  for (const float e : x) want += double{e} * e;
  CHECK(std::abs(first - want) <= 1e-12 * want);
}

TEST_CASE("the mirrored Gram product is symmetric at every level") {
  const std::int64_t n = 200, m = 77;
  const auto x = muon::test::random_uniform(static_cast<std::size_t>(n * m), 14);
  for (const CpuIsa isa : supported_levels()) {
    muon::EigenBackend cpu({.isa = isa});
    std::vector<float> c(static_cast<std::size_t>(n * n), NAN);
    cpu.gram(1.0f, {x.data(), 1, n, m}, muon::GramSide::rows, 0.0f, {c.data(), 1, n, n});
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < n; ++j)
        REQUIRE(c[static_cast<std::size_t>(i * n + j)] == c[static_cast<std::size_t>(j * n + i)]);
  }
}

TEST_CASE("every supported level rounds to bf16 to nearest even, keeping NaN and infinities") {
  std::vector<float> x = muon::test::random_uniform(kN, 15);
  const std::vector<std::uint32_t> special{0x3F808000u,   // halfway, even below: rounds down
                                           0x3F818000u,   // halfway, odd below: rounds up
                                           0x3F80FFFFu,   // just under halfway up
                                           0x7F7FFFFFu,   // largest float: rounds to +inf
                                           0x7F800000u,   // +inf
                                           0xFF800000u,   // -inf
                                           0x7F800001u,   // signalling NaN: stays NaN
                                           0x80000000u};  // -0
  for (std::size_t i = 0; i < special.size(); ++i) std::memcpy(&x[i], &special[i], 4);
  const std::vector<std::uint16_t> want_special{0x3F80, 0x3F82, 0x3F81, 0x7F80, 0x7F80, 0xFF80, 0x7FC0, 0x8000};
  for (const CpuIsa isa : supported_levels()) {
    CAPTURE(muon::to_string(isa));
    std::vector<std::uint16_t> y(kN, 0xDEAD);
    cpu::elementwise_kernels(isa).to_bf16(x.data(), y.data(), kN);
    for (std::size_t i = 0; i < special.size(); ++i) CHECK(y[i] == want_special[i]);
    for (std::size_t i = special.size(); i < kN; ++i) {
      // The nearest bf16: its error is at most half a bf16 ulp (2^-8 relative), and the two
      // neighbours are farther.
      float got = 0.0f;
      const std::uint32_t bits = std::uint32_t{y[i]} << 16;
      std::memcpy(&got, &bits, 4);
      REQUIRE(std::abs(got - x[i]) <= std::ldexp(std::abs(x[i]), -8));
    }
  }
}

TEST_CASE("every supported level mirrors the lower triangle exactly, whatever the row split") {
  for (const std::int64_t n : {1, 15, 16, 64, 77, 200}) {
    const auto c0 = muon::test::random_uniform(static_cast<std::size_t>(n * n), 16);
    auto want = c0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < i; ++j)
        want[static_cast<std::size_t>(j * n + i)] = want[static_cast<std::size_t>(i * n + j)];
    for (const CpuIsa isa : supported_levels()) {
      CAPTURE(muon::to_string(isa));
      CAPTURE(n);
      auto whole = c0, split = c0;
      cpu::elementwise_kernels(isa).mirror_lower(whole.data(), n, 0, n);
      for (std::int64_t r = 0; r < n; r += 16)
        cpu::elementwise_kernels(isa).mirror_lower(split.data(), n, r, std::min(r + 16, n));
      CHECK(whole == want);
      CHECK(split == want);
    }
  }
}

TEST_CASE("results do not depend on how the memory is aligned") {
  const auto g = muon::test::random_uniform(kN + 16, 17), w0 = muon::test::random_uniform(kN + 16, 18), m0 = muon::test::random_uniform(kN + 16, 19);
  const auto v0 = muon::test::random_uniform(kN + 16, 20, 0.0f, 1.0f);
  const cpu::AdamWFactors af{.beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step_size = 0.05f, .decay = 0.999f,
                             .bc2_sqrt = 0.3f, .grad_scale = 1.0f};
  for (const CpuIsa isa : supported_levels()) {
    CAPTURE(muon::to_string(isa));
    const cpu::ElementwiseKernels& k = cpu::elementwise_kernels(isa);
    std::vector<float> first_w;
    double first_sum = 0.0;
    for (std::size_t offset = 0; offset < 16; ++offset) {
      // The same values at another address: copied `offset` floats further into the buffers.
      std::vector<float> w(kN + 16), m(kN + 16), v(kN + 16), gs(kN + 16);
      std::copy_n(w0.begin(), kN, w.begin() + static_cast<std::ptrdiff_t>(offset));
      std::copy_n(m0.begin(), kN, m.begin() + static_cast<std::ptrdiff_t>(offset));
      std::copy_n(v0.begin(), kN, v.begin() + static_cast<std::ptrdiff_t>(offset));
      std::copy_n(g.begin(), kN, gs.begin() + static_cast<std::ptrdiff_t>(offset));
      k.adamw(w.data() + offset, gs.data() + offset, m.data() + offset, v.data() + offset, kN, af);
      const std::vector<float> got(w.begin() + static_cast<std::ptrdiff_t>(offset),
                                   w.begin() + static_cast<std::ptrdiff_t>(offset + kN));
      const double sum = k.sum_squares(gs.data() + offset, kN);
      if (offset == 0) {
        first_w = got;
        first_sum = sum;
      }
      CAPTURE(offset);
      CHECK(got == first_w);
      CHECK(sum == first_sum);
    }
  }
}

TEST_CASE("MUON_MAX_CPU_ISA caps the dispatch") {
  // CTest runs this file once more under each cap (tests/CMakeLists.txt).
  const char* cap = std::getenv("MUON_MAX_CPU_ISA");
  if (cap == nullptr) {
    MESSAGE("MUON_MAX_CPU_ISA unset: the detected level is the CPU's widest");
    return;
  }
  const auto level = [](CpuIsa isa) { return static_cast<int>(isa); };
  const auto capped = std::find_if(muon::kAllCpuIsas.begin(), muon::kAllCpuIsas.end(),
                                   [&](CpuIsa isa) { return muon::to_string(isa) == cap; });
  REQUIRE(capped != muon::kAllCpuIsas.end());
  MESSAGE("capped at " << cap << ": detected " << muon::to_string(muon::detected_cpu_isa()));
  CHECK(level(muon::detected_cpu_isa()) <= level(*capped));
  for (const CpuIsa isa : muon::kAllCpuIsas)
    if (level(isa) > level(*capped)) CHECK_FALSE(muon::cpu_supports(isa));
  if (level(*capped) < level(CpuIsa::avx512)) CHECK_FALSE(muon::cpu_has_bf16_instructions());
}
