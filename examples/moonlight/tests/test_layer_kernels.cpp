// The layers' dispatched loops (moonlight/layers/kernels.hpp) at every level this
// CPU runs: e^x against the exact value, the SwiGLU gate and its backward against fp64 formulas,
// the row maximum, and sums whose bits do not depend on where a row is allocated.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <moonlight/layers/kernels.hpp>
#include "support.hpp"
#include <string>
#include <vector>

namespace {

using moonlight::layers::LayerKernels;
using moonlight::layers::layer_kernels;

std::vector<muon::CpuIsa> supported_levels() {
  std::vector<muon::CpuIsa> levels;
  for (const muon::CpuIsa isa : muon::kAllCpuIsas)
    if (muon::cpu_supports(isa)) levels.push_back(isa);
  return levels;
}

// The distance of `got` from the exact `want` in units of the last place of a float of want's
// size (the subnormal spacing 2^-149 below 2^-126).
double ulps(float got, double want) {
  const double ulp = std::ldexp(1.0, std::max(std::ilogb(want), -126) - 23);
  return std::abs(double{got} - want) / ulp;
}

constexpr float kInf = std::numeric_limits<float>::infinity();

// worst ← error where error is larger or NaN: an element left unwritten or poisoned stays the worst.
void keep_worst(double& worst, double error) {
  if (!(error <= worst)) worst = error;
}

}  // namespace

TEST_CASE("exp_sum: e^x within 1.5 ulp from underflow to overflow, with IEEE limits") {
  // Every 997th float of the range where e^x is finite and not 0 (~2 million arguments, the
  // subnormal results included). Measured over every 97th float: at most 1.003 ulp at every
  // level (Cephes' polynomial is accurate to ~1 ulp). Mutations tried: 2^(n+1) fails 84 checks,
  // the r⁴ or r⁵ coefficient 0.2–0.4% off fails at every level (an r⁶ one 0.6% off moves the
  // result by 0.1 ulp: no test can see it, nor can any user).
  std::vector<float> x;
  for (std::uint32_t bits = 0; bits < 0x7F800000u; bits += 997) {
    float v = 0.0f;
    std::memcpy(&v, &bits, sizeof v);
    if (v < 88.7f) x.push_back(v);
    if (v < 103.2f) x.push_back(-v);
  }
  for (const muon::CpuIsa isa : supported_levels()) {
    CAPTURE(std::string(muon::to_string(isa)));
    const LayerKernels& k = layer_kernels(isa);
    std::vector<float> e = x;
    k.exp_sum(e.data(), static_cast<std::int64_t>(e.size()), 0.0f);  // the sum overflows here
    double worst = 0.0;
    float worst_at = 0.0f;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double want = std::exp(double{x[i]});
      if (!(ulps(e[i], want) <= worst)) worst = ulps(e[i], want), worst_at = x[i];
    }
    INFO("worst at x = " << worst_at);
    CHECK(worst <= 1.5);

    float specials[] = {0.0f, -kInf, -200.0f, -104.5f, 89.0f, kInf, std::nanf(""), 1.0f};
    k.exp_sum(specials, 8, 0.0f);
    CHECK(specials[0] == 1.0f);
    CHECK(specials[1] == 0.0f);
    CHECK(specials[2] == 0.0f);
    CHECK(specials[3] == 0.0f);
    CHECK(specials[4] == kInf);
    CHECK(specials[5] == kInf);
    CHECK(std::isnan(specials[6]));
    CHECK(ulps(specials[7], std::exp(1.0)) <= 1.5);
  }
}

TEST_CASE("exp_sum shifts, and its sum depends on the data only, never on the row's address or its tail") {
  const std::vector<float> row = muon::test::random_uniform(1000, 7, -30.0f, 5.0f);
  for (const muon::CpuIsa isa : supported_levels()) {
    CAPTURE(std::string(muon::to_string(isa)));
    const LayerKernels& k = layer_kernels(isa);
    std::vector<float> reference = row;
    const float shift = 4.5f, sum = k.exp_sum(reference.data(), 1000, shift);
    CHECK(ulps(reference[3], std::exp(double{row[3] - shift})) <= 1.5);  // the kernel subtracts in float
    // The same row at every offset of a vector: the same values and the same sum, bit for bit.
    std::vector<float> buffer(1000 + 16);
    for (std::size_t offset = 0; offset < 16; ++offset) {
      std::copy(row.begin(), row.end(), buffer.begin() + static_cast<std::ptrdiff_t>(offset));
      CAPTURE(offset);
      CHECK(k.exp_sum(buffer.data() + offset, 1000, shift) == sum);
      CHECK(std::equal(reference.begin(), reference.end(), buffer.begin() + static_cast<std::ptrdiff_t>(offset)));
    }
    // Short rows (a partial vector alone): the padding lanes add nothing.
    for (std::int64_t n = 1; n <= 20; ++n) {
      std::vector<float> head(row.begin(), row.begin() + n);
      double exact = 0.0;
      for (std::int64_t i = 0; i < n; ++i) exact += std::exp(double{row[static_cast<std::size_t>(i)] - shift});
      CAPTURE(n);
      // n positive terms, each within ~1 ulp, summed in float: within (n + 1)·2^-24 relative.
      CHECK(double{k.exp_sum(head.data(), n, shift)} ==
            doctest::Approx(exact).epsilon(static_cast<double>(n + 1) * 0x1p-24));
    }
  }
}

TEST_CASE("max: the largest element at any length, NaNs ignored, -inf when there is none") {
  for (const muon::CpuIsa isa : supported_levels()) {
    CAPTURE(std::string(muon::to_string(isa)));
    const LayerKernels& k = layer_kernels(isa);
    for (std::int64_t n = 1; n <= 40; ++n) {
      for (std::int64_t at = 0; at < n; ++at) {
        std::vector<float> v(static_cast<std::size_t>(n), -3.0f);
        v[static_cast<std::size_t>(at)] = 2.5f;
        if (at > 0) v[0] = std::nanf("");
        CAPTURE(n);
        CAPTURE(at);
        CHECK(k.max(v.data(), n) == 2.5f);
      }
    }
    const float nans[] = {std::nanf(""), std::nanf("")};
    CHECK(k.max(nans, 2) == -kInf);
    CHECK(k.max(nans, 0) == -kInf);
  }
}

TEST_CASE("silu_mul and its backward equal the fp64 formulas within a few ulp") {
  // Gates over [-20, 20] and beyond either end of lane_exp's clamps, so that σ saturates both ways.
  std::vector<float> g = muon::test::random_uniform(4099, 11, -20.0f, 20.0f), u = muon::test::random_uniform(4099, 12, -2.0f, 2.0f),
                     da = muon::test::random_uniform(4099, 13, -1.0f, 1.0f);
  g[0] = -150.0f, g[1] = 150.0f, g[2] = 0.0f;
  const auto n = static_cast<std::int64_t>(g.size());
  for (const muon::CpuIsa isa : supported_levels()) {
    CAPTURE(std::string(muon::to_string(isa)));
    const LayerKernels& k = layer_kernels(isa);
    std::vector<float> a(g.size()), dg(g.size()), du(g.size());
    k.silu_mul(g.data(), u.data(), a.data(), n);
    k.silu_mul_backward(g.data(), u.data(), da.data(), dg.data(), du.data(), n);
    // A few float operations on top of e^x's ~1 ulp, each rounding once; near σ's saturation
    // 1 − σ cancels, which the formula also does in fp64. Measured ≤ 1.6e-7 of the terms' size at
    // every level; 1e-6 leaves room, a wrong sign or factor is O(1).
    double worst_a = 0.0, worst_dg = 0.0, worst_du = 0.0;
    for (std::size_t i = 0; i < g.size(); ++i) {
      const double z = g[i], s = 1.0 / (1.0 + std::exp(-z));
      const double scale_a = std::abs(z * u[i]) + 1e-30;
      const double scale_d = std::abs(da[i]) * (1.0 + std::abs(z)) * (1.0 + std::abs(u[i]));
      keep_worst(worst_a, std::abs(a[i] - z * s * u[i]) / scale_a);
      keep_worst(worst_du, std::abs(du[i] - da[i] * z * s) / scale_d);
      keep_worst(worst_dg, std::abs(dg[i] - da[i] * u[i] * s * (1.0 + z * (1.0 - s))) / scale_d);
    }
    CHECK(worst_a <= 1e-6);
    CHECK(worst_du <= 1e-6);
    CHECK(worst_dg <= 1e-6);
    CHECK(a[0] == 0.0f);
    CHECK(a[1] == 150.0f * u[1]);
    CHECK(a[2] == 0.0f);
  }
}

TEST_CASE("few_rows_product equals the fp64 product, across token blocks and leftover weight rows") {
  // k = 37 and n = 21: a weight row ends mid-vector and n leaves 5 rows after two groups of 8;
  // m up to 70 crosses every level's token block (4, 8, 16 lanes) and the 64-row threshold.
  const std::int64_t k = 37, n = 21;
  const std::vector<float> w = muon::test::random_uniform(static_cast<std::size_t>(n * k), 21, -1.0f, 1.0f);
  for (const muon::CpuIsa isa : supported_levels()) {
    CAPTURE(std::string(muon::to_string(isa)));
    const LayerKernels& kernels = layer_kernels(isa);
    for (const std::int64_t m : {1, 3, 4, 5, 8, 12, 16, 17, 33, 64, 70}) {
      CAPTURE(m);
      const std::vector<float> x =
          muon::test::random_uniform(static_cast<std::size_t>(m * k), static_cast<unsigned>(m), -1.0f, 1.0f);
      std::vector<float> y(static_cast<std::size_t>(m * n), std::nanf(""));
      kernels.few_rows_product(x.data(), m, k, w.data(), n, y.data());
      // Each element is a k-term fp32 sum: |error| ≤ k·2^-24·Σ|x·w| (the classic bound, ≈ 2.2e-6
      // of Σ|x·w| here); a wrong index or a lost lane is off by O(Σ|x·w|).
      double worst = 0.0;
      for (std::int64_t t = 0; t < m; ++t)
        for (std::int64_t j = 0; j < n; ++j) {
          double exact = 0.0, size = 0.0;
          for (std::int64_t i = 0; i < k; ++i) {
            const double term = double{x[static_cast<std::size_t>(t * k + i)]} * w[static_cast<std::size_t>(j * k + i)];
            exact += term, size += std::abs(term);
          }
          keep_worst(worst, std::abs(y[static_cast<std::size_t>(t * n + j)] - exact) / size);
        }
      CHECK(worst <= static_cast<double>(k) * 0x1p-24);
    }
  }
}
