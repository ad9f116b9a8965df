// The CUDA backend against the Eigen backend: every operation on random inputs, with outputs
// poisoned with NaN before each run (so an element the GPU forgets to write fails the test),
// Newton–Schulz batched against looped, a full optimizer step GPU against CPU, and a step
// captured in a CUDA graph and replayed. Without a GPU, main returns 77 and CTest reports the
// tests as skipped, or fails with MUON_REQUIRE_GPU=1 (gpu_main.hpp).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <muon/backends/cuda.hpp>
#include <muon/backends/cuda_gradients.hpp>
#include <muon/muon.hpp>
#include <vector>

#include "gpu_main.hpp"
#include "cuda_reference.hpp"

namespace {

namespace ref = muon::test::eigen_reference;
using muon::CudaBackend;
using muon::CudaOptions;
using muon::MatrixStack;
using muon::NsPrecision;
using muon::Transpose;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Seeded uniform values in [−scale/2, scale/2): every run sees the same data.
std::vector<float> random_values(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::vector<float> v(n);
  unsigned s = seed * 2654435761u + 1u;
  for (float& x : v) {
    s = s * 1664525u + 1013904223u;
    x = scale * (static_cast<float>(s >> 8) / 16777216.0f - 0.5f);
  }
  return v;
}

std::vector<float> rounded_to_bf16(std::vector<float> v) {
  for (float& x : v) x = __bfloat162float(__float2bfloat16(x));
  return v;
}

// A device copy of host values.
struct Device {
  Device(CudaBackend& gpu, const std::vector<float>& host)
      : buffer(gpu.allocate(static_cast<std::int64_t>(host.size()))) {
    gpu.from_host(host, buffer.span());
  }
  float* data() { return buffer.span().data(); }
  std::span<float> span() { return buffer.span(); }
  CudaBackend::Buffer buffer;
};

// One step block entry on the host (for the CPU reference) and on the device (for the GPU).
struct StepBlock {
  StepBlock(CudaBackend& gpu, const muon::StepValues& v)
      : host(v), device(gpu, std::vector<float>(reinterpret_cast<const float*>(&v),
                                                reinterpret_cast<const float*>(&v) + muon::kStepValuesFloats)) {}
  const muon::StepValues* on_device() { return muon::step_values_of(device.span()); }
  muon::StepValues host;
  Device device;
};

std::vector<float> download(CudaBackend& gpu, std::span<const float> x) {
  std::vector<float> host(x.size());
  gpu.to_host(x, host);
  return host;
}

void poison(CudaBackend& gpu, std::span<float> x) { gpu.from_host(std::vector<float>(x.size(), kNaN), x); }

// max|x − y| / max|y|: the error relative to the scale of the reference result; infinite if x
// holds a non-finite value (a poisoned element left unwritten), or y does.
double relative_error(const std::vector<float>& x, const std::vector<float>& y) {
  REQUIRE(x.size() == y.size());
  double diff = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    // A non-finite reference would make every comparison false and the error 0: fail instead.
    if (!std::isfinite(x[i]) || !std::isfinite(y[i])) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(double{x[i]} - double{y[i]}));
    scale = std::max(scale, std::abs(double{y[i]}));
  }
  return scale == 0.0 ? diff : diff / scale;
}

// fp32 products against OpenBLAS: both round each of the k terms of a dot product, in other
// orders; the bound γ_k·Σ|a·b| with k ≤ 128 and u = 2⁻²⁴ is below 1e-5 of max|C| for these data,
// and 3e-5 leaves room for the two sides' errors adding up.
constexpr double kFp32ProductTolerance = 3e-5;
// Elementwise fp32 operations: the same formulas; only FMA contraction differs (a few ulps).
constexpr double kElementwiseTolerance = 1e-6;

}  // namespace

TEST_SUITE_BEGIN("gpu");
TEST_CASE("every CUDA operation in fp32 conforms to the Eigen backend") {
  CudaBackend gpu(CudaOptions{.ns_precision = NsPrecision::fp32});
  const std::int64_t batch = 3, m = 37, k = 53, n = 29;
  const auto a = random_values(batch * m * k, 1), b = random_values(batch * k * n, 2),
             c0 = random_values(batch * m * n, 3);
  Device da(gpu, a), db(gpu, b);

  for (const auto ta : {Transpose::no, Transpose::yes})
    for (const auto tb : {Transpose::no, Transpose::yes})
      for (const float beta : {0.0f, 0.3f}) {
        CAPTURE(static_cast<int>(ta));
        CAPTURE(static_cast<int>(tb));
        CAPTURE(beta);
        // The same memory read as A (m×k) or Aᵀ stored k×m, and B (k×n) or Bᵀ stored n×k.
        const MatrixStack<const float> A{a.data(), batch, ta == Transpose::no ? m : k, ta == Transpose::no ? k : m};
        const MatrixStack<const float> B{b.data(), batch, tb == Transpose::no ? k : n, tb == Transpose::no ? n : k};
        auto expected = c0;
        ref::gemm(0.7f, A, ta, B, tb, beta, {expected.data(), batch, m, n});
        Device dc(gpu, c0);
        if (beta == 0.0f) poison(gpu, dc.span());
        gpu.gemm(0.7f, {da.data(), A.batch, A.rows, A.cols}, ta, {db.data(), B.batch, B.rows, B.cols}, tb, beta,
                 {dc.data(), batch, m, n});
        CHECK(relative_error(download(gpu, dc.span()), expected) < kFp32ProductTolerance);
      }

  for (const auto side : {muon::GramSide::rows, muon::GramSide::cols})
    for (const float beta : {0.0f, 0.25f}) {
      CAPTURE(beta);
      const std::int64_t s = side == muon::GramSide::rows ? m : k;
      auto c = random_values(batch * s * s, 4);  // β ≠ 0 needs a symmetric C: make it so
      for (std::int64_t q = 0; q < batch; ++q)
        for (std::int64_t i = 0; i < s; ++i)
          for (std::int64_t j = 0; j < i; ++j) c[(q * s + j) * s + i] = c[(q * s + i) * s + j];
      auto expected = c;
      ref::gram(0.5f, {a.data(), batch, m, k}, side, beta, {expected.data(), batch, s, s});
      Device dc(gpu, c);
      if (beta == 0.0f) poison(gpu, dc.span());
      gpu.gram(0.5f, {da.data(), batch, m, k}, side, beta, {dc.data(), batch, s, s});
      CHECK(relative_error(download(gpu, dc.span()), expected) < kFp32ProductTolerance);
    }

  for (const float beta : {0.0f, -0.5f}) {
    auto y = random_values(a.size(), 5), expected = y;
    ref::axpby(1.5f, a, beta, expected);
    Device dy(gpu, y);
    if (beta == 0.0f) poison(gpu, dy.span());
    gpu.axpby(1.5f, da.span(), beta, dy.span());
    CHECK(relative_error(download(gpu, dy.span()), expected) < kElementwiseTolerance);
  }

  for (const auto mode : {muon::NormEps::add, muon::NormEps::max}) {
    // The third matrix is tiny, so that ε matters and the two modes differ.
    auto x = a;
    for (std::int64_t i = 2 * m * k; i < 3 * m * k; ++i) x[static_cast<std::size_t>(i)] *= 1e-9f;
    auto expected = x;
    ref::normalize({expected.data(), batch, m, k}, 1e-7f, mode);
    Device dx(gpu, x);
    gpu.normalize({dx.data(), batch, m, k}, 1e-7f, mode);
    CHECK(relative_error(download(gpu, dx.span()), expected) < kElementwiseTolerance);
  }

  {
    // NorMuon's rows: the Eigen backend's double sums and float factors. Row 5 of the second
    // matrix is zero (a dead neuron) with v = 0, where only ε keeps the result finite.
    auto x = a, v = random_values(static_cast<std::size_t>(batch * m), 8);
    for (float& e : v) e = e * e;
    std::fill_n(x.begin() + (m + 5) * k, k, 0.0f);
    v[static_cast<std::size_t>(m + 5)] = 0.0f;
    auto xe = x, ve = v;
    const muon::RowNormStep s{0.95f, 1e-8f};
    ref::normalize_rows({xe.data(), batch, m, k}, ve, s);
    Device dx(gpu, x), dv(gpu, v);
    gpu.normalize_rows({dx.data(), batch, m, k}, dv.span(), s);
    CHECK(relative_error(download(gpu, dx.span()), xe) < kElementwiseTolerance);
    CHECK(relative_error(download(gpu, dv.span()), ve) < kElementwiseTolerance);
  }

  // Step 3 of a group with lr 0.01, weight decay 0.1 and a clipping factor of 0.5.
  StepBlock block(gpu, muon::step_values({.lr = 0.01, .weight_decay = 0.1}, 1.0, 0.5, 3));
  for (const auto form : {muon::MomentumForm::sum, muon::MomentumForm::ema})
    for (const bool nesterov : {true, false}) {
      const muon::MomentumStep s{0.9f, form, nesterov, &block.host};
      const std::vector<float> g(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(c0.size()));
      auto m_expected = c0;
      std::vector<float> u_expected(c0.size());
      ref::momentum(m_expected, g, s, u_expected);
      Device dm(gpu, c0), dg(gpu, g), du(gpu, std::vector<float>(c0.size(), kNaN));
      gpu.momentum(dm.span(), dg.span(), {s.mu, s.form, s.nesterov, block.on_device()}, du.span());
      CHECK(relative_error(download(gpu, dm.span()), m_expected) < kElementwiseTolerance);
      CHECK(relative_error(download(gpu, du.span()), u_expected) < kElementwiseTolerance);
    }

  {
    auto w = c0, mom = random_values(c0.size(), 6), v = random_values(c0.size(), 7);
    for (float& x : v) x = x * x;
    const std::vector<float> g(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(c0.size()));
    const muon::AdamWStep s{0.9f, 0.95f, 1e-8f, &block.host};
    auto we = w, me = mom, ve = v;
    ref::adamw(we, g, me, ve, s);
    Device dw(gpu, w), dg(gpu, g), dm(gpu, mom), dv(gpu, v);
    gpu.adamw(dw.span(), dg.span(), dm.span(), dv.span(), {s.beta1, s.beta2, s.eps, block.on_device()});
    CHECK(relative_error(download(gpu, dw.span()), we) < kElementwiseTolerance);
    CHECK(relative_error(download(gpu, dm.span()), me) < kElementwiseTolerance);
    CHECK(relative_error(download(gpu, dv.span()), ve) < kElementwiseTolerance);
  }

  {
    auto w = c0;
    const std::vector<float> o(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(c0.size()));
    const double scale = muon::update_scale(muon::ScaleMode::match_adamw_rms, 6, 5);
    ref::update(w, o, {scale, &block.host});
    Device dw(gpu, c0), d_o(gpu, o);
    gpu.update(dw.span(), d_o.span(), {scale, block.on_device()});
    CHECK(relative_error(download(gpu, dw.span()), w) < kElementwiseTolerance);
  }

  // Both sum in double, in other orders: relative rounding error about n·2⁻⁵³.
  CHECK(gpu.sum_squares(da.span()) == doctest::Approx(ref::sum_squares(a)).epsilon(1e-12));
}

TEST_CASE("bf16 products equal fp32 products of bf16-rounded operands on every path") {
  // The operands are rounded to bf16 on the host and the reference multiplies them in fp32:
  // bf16 products are exact in fp32, so only the accumulation differs. Tensor cores accumulate
  // in fp32 but do not round every partial sum as IEEE does, hence 1e-4 rather than 3e-5.
  constexpr double kTolerance = 1e-4;
  // symmetric_tile_min 64 sends small Gram matrices down the tile-pair path (through either tile
  // GEMM); the default sends them to one full GEMM.
  for (const auto& [tile_min, tile_gemm] :
       {std::pair{std::int64_t{64}, muon::SymmetricTileGemm::pointer_array},
        std::pair{std::int64_t{64}, muon::SymmetricTileGemm::strided_per_pair},
        std::pair{std::int64_t{512}, muon::SymmetricTileGemm::pointer_array}}) {
    CAPTURE(tile_min);
    CAPTURE(static_cast<int>(tile_gemm));
    CudaBackend gpu(
        CudaOptions{.ns_precision = NsPrecision::bf16, .symmetric_tile_min = tile_min, .tile_gemm = tile_gemm});
    // Gram sizes 256 (4 tiles of 64), 128 (2 tiles of 64) and 200 (no tiling), on both sides.
    for (const auto& [rows, cols, side] : {std::tuple{256, 96, muon::GramSide::rows},
                                           {80, 128, muon::GramSide::cols},
                                           {200, 72, muon::GramSide::rows},
                                           {40, 200, muon::GramSide::cols}})
      for (const float beta : {0.0f, 1.0f}) {
        CAPTURE(rows);
        CAPTURE(cols);
        CAPTURE(beta);
        const std::int64_t batch = 2, s = side == muon::GramSide::rows ? rows : cols;
        const auto x = random_values(static_cast<std::size_t>(batch * rows * cols), 8);
        auto c = random_values(static_cast<std::size_t>(batch * s * s), 9);
        for (std::int64_t q = 0; q < batch; ++q)
          for (std::int64_t i = 0; i < s; ++i)
            for (std::int64_t j = 0; j < i; ++j) c[(q * s + j) * s + i] = c[(q * s + i) * s + j];
        auto expected = c, expected_fp32 = c;
        const auto x16 = rounded_to_bf16(x);
        ref::gram(2.0f, {x16.data(), batch, rows, cols}, side, beta, {expected.data(), batch, s, s});
        ref::gram(2.0f, {x.data(), batch, rows, cols}, side, beta, {expected_fp32.data(), batch, s, s});
        Device dx(gpu, x), dc(gpu, c);
        if (beta == 0.0f) poison(gpu, dc.span());
        gpu.gram(2.0f, {dx.data(), batch, rows, cols}, side, beta, {dc.data(), batch, s, s});
        const auto got = download(gpu, dc.span());
        CHECK(relative_error(got, expected) < kTolerance);
        // And against unrounded operands: each rounding moves a value by at most 2⁻⁹ relative.
        CHECK(relative_error(got, expected_fp32) < 1e-2);
      }
    for (const auto ta : {Transpose::no, Transpose::yes})
      for (const auto tb : {Transpose::no, Transpose::yes}) {
        const std::int64_t batch = 2, m = 48, k = 72, n = 40;
        const auto a = random_values(batch * m * k, 10), b = random_values(batch * k * n, 11);
        const auto a16 = rounded_to_bf16(a), b16 = rounded_to_bf16(b);
        const auto dims = [&](Transpose t, std::int64_t r, std::int64_t c) {
          return t == Transpose::no ? std::pair{r, c} : std::pair{c, r};
        };
        const auto [ar, ac] = dims(ta, m, k);
        const auto [br, bc] = dims(tb, k, n);
        std::vector<float> expected(static_cast<std::size_t>(batch * m * n));
        ref::gemm(1.0f, {a16.data(), batch, ar, ac}, ta, {b16.data(), batch, br, bc}, tb, 0.0f,
                  {expected.data(), batch, m, n});
        Device da(gpu, a), db(gpu, b), dc(gpu, std::vector<float>(expected.size(), kNaN));
        gpu.gemm(1.0f, {da.data(), batch, ar, ac}, ta, {db.data(), batch, br, bc}, tb, 0.0f, {dc.data(), batch, m, n});
        CHECK(relative_error(download(gpu, dc.span()), expected) < kTolerance);
      }
  }
}

TEST_CASE("fp32 Gram matrices of one matrix (SYRK) and of stacks (tiled or not, both tile GEMMs) conform") {
  for (const auto tile_gemm : {muon::SymmetricTileGemm::pointer_array, muon::SymmetricTileGemm::strided_per_pair}) {
    CAPTURE(static_cast<int>(tile_gemm));
    CudaBackend gpu(CudaOptions{.ns_precision = NsPrecision::fp32, .symmetric_tile_min = 64, .tile_gemm = tile_gemm});
    // Gram sizes 256 (4 tiles), 128 (2 tiles) and 200 (one full GEMM); batch 1 takes SYRK.
    for (const auto& [rows, cols, side] : {std::tuple{256, 96, muon::GramSide::rows},
                                           {80, 128, muon::GramSide::cols},
                                           {200, 72, muon::GramSide::rows}})
      for (const std::int64_t batch : {1, 3})
        for (const float beta : {0.0f, 0.5f}) {
          CAPTURE(rows);
          CAPTURE(cols);
          CAPTURE(batch);
          CAPTURE(beta);
          const std::int64_t s = side == muon::GramSide::rows ? rows : cols;
          const auto x = random_values(static_cast<std::size_t>(batch * rows * cols), 21);
          auto c = random_values(static_cast<std::size_t>(batch * s * s), 22);
          for (std::int64_t q = 0; q < batch; ++q)
            for (std::int64_t i = 0; i < s; ++i)
              for (std::int64_t j = 0; j < i; ++j) c[(q * s + j) * s + i] = c[(q * s + i) * s + j];
          auto expected = c;
          ref::gram(1.5f, {x.data(), batch, rows, cols}, side, beta, {expected.data(), batch, s, s});
          Device dx(gpu, x), dc(gpu, c);
          if (beta == 0.0f) poison(gpu, dc.span());
          gpu.gram(1.5f, {dx.data(), batch, rows, cols}, side, beta, {dc.data(), batch, s, s});
          CHECK(relative_error(download(gpu, dc.span()), expected) < kFp32ProductTolerance);
        }
  }
}

TEST_CASE("fp32 means fp32 on a caller's handle in TF32 mode, and the caller's mode comes back") {
  cublasHandle_t handle = nullptr;
  REQUIRE(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS);
  REQUIRE(cublasSetMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH) == CUBLAS_STATUS_SUCCESS);
  {
    CudaBackend caller(nullptr, handle, CudaOptions{.ns_precision = NsPrecision::fp32});
    CudaBackend own(CudaOptions{.ns_precision = NsPrecision::fp32});
    // k = 128: TF32's 10-bit mantissas would miss the fp32 bound by an order of magnitude.
    const std::int64_t batch = 2, m = 96, k = 128, n = 64;
    const auto a = random_values(batch * m * k, 31), b = random_values(batch * k * n, 32);
    std::vector<float> expected(static_cast<std::size_t>(batch * m * n)), expected_gram(batch * m * m);
    ref::gemm(1.0f, {a.data(), batch, m, k}, Transpose::no, {b.data(), batch, k, n}, Transpose::no, 0.0f,
              {expected.data(), batch, m, n});
    ref::gram(1.0f, {a.data(), batch, m, k}, muon::GramSide::rows, 0.0f, {expected_gram.data(), batch, m, m});
    std::vector<std::vector<float>> results;
    for (CudaBackend* gpu : {&caller, &own}) {
      Device da(*gpu, a), db(*gpu, b), dc(*gpu, std::vector<float>(expected.size(), kNaN)),
          dg(*gpu, std::vector<float>(expected_gram.size(), kNaN)), dg1(*gpu, std::vector<float>(m * m, kNaN));
      gpu->gemm(1.0f, {da.data(), batch, m, k}, Transpose::no, {db.data(), batch, k, n}, Transpose::no, 0.0f,
                {dc.data(), batch, m, n});
      gpu->gram(1.0f, {da.data(), batch, m, k}, muon::GramSide::rows, 0.0f, {dg.data(), batch, m, m});
      gpu->gram(1.0f, {da.data(), 1, m, k}, muon::GramSide::rows, 0.0f, {dg1.data(), 1, m, m});  // SYRK
      const auto c = download(*gpu, dc.span()), g = download(*gpu, dg.span()), g1 = download(*gpu, dg1.span());
      CHECK(relative_error(c, expected) < kFp32ProductTolerance);
      CHECK(relative_error(g, expected_gram) < kFp32ProductTolerance);
      CHECK(relative_error(g1, std::vector<float>(expected_gram.begin(), expected_gram.begin() + m * m)) <
            kFp32ProductTolerance);
      results.push_back(c);
      results.push_back(g);
    }
    // The caller's handle computes what the backend's own (in its default mode) computes.
    CHECK(relative_error(results[0], results[2]) < 1e-6);
    CHECK(relative_error(results[1], results[3]) < 1e-6);
    cublasMath_t mode = CUBLAS_DEFAULT_MATH;
    REQUIRE(cublasGetMathMode(handle, &mode) == CUBLAS_STATUS_SUCCESS);
    CHECK(mode == CUBLAS_TF32_TENSOR_OP_MATH);
  }
  cublasDestroy(handle);
}

TEST_CASE("the scratch arena grows geometrically and frees what no captured graph can use") {
  CudaBackend gpu;
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  // The arena comes from the device's default memory pool (cudaMallocAsync); what the pool has
  // handed out and not taken back shows whether an arena was really freed.
  int device = 0;
  REQUIRE(cudaGetDevice(&device) == cudaSuccess);
  cudaMemPool_t pool = nullptr;
  REQUIRE(cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess);
  const auto pool_used = [&] {
    REQUIRE(cudaStreamSynchronize(gpu.stream()) == cudaSuccess);
    std::uint64_t used = 0;
    REQUIRE(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) == cudaSuccess);
    return used;
  };
  (void)gpu.scratch(1000);
  CHECK(gpu.scratch_bytes() == kMiB);
  (void)gpu.scratch(kMiB + 1);  // 1.5 MiB, rounded up to 2
  CHECK(gpu.scratch_bytes() == 2 * kMiB);
  (void)gpu.scratch(2 * kMiB + 1);  // ×1.5: 3 MiB
  CHECK(gpu.scratch_bytes() == 3 * kMiB);
  CHECK(gpu.retired_scratch_count() == 0);  // no capture saw the outgrown arenas: freed at once

  // An arena handed out during a capture may be read by the graph's replays: kept when outgrown.
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(gpu.stream(), cudaStreamCaptureModeGlobal) == cudaSuccess);
  void* captured = gpu.scratch(100);
  REQUIRE(cudaMemsetAsync(captured, 0, 100, gpu.stream()) == cudaSuccess);
  // Growing during a capture would allocate: refused, and the capture goes on.
  CHECK_THROWS_AS((void)gpu.scratch(100 * kMiB), muon::CudaError);
  REQUIRE(cudaStreamEndCapture(gpu.stream(), &graph) == cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  (void)gpu.scratch(10 * kMiB);
  CHECK(gpu.scratch_bytes() == 10 * kMiB);
  CHECK(gpu.retired_scratch_count() == 1);
  const std::uint64_t with_retired = pool_used();
  REQUIRE(cudaGraphLaunch(exec, gpu.stream()) == cudaSuccess);  // still valid memory
  REQUIRE(cudaStreamSynchronize(gpu.stream()) == cudaSuccess);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  gpu.release_retired_scratch();
  CHECK(gpu.retired_scratch_count() == 0);
  const std::uint64_t released = pool_used();
  // The 3 MiB arena the graph could use went back (the pool may round a size up).
  CHECK(with_retired - released >= 3 * kMiB);
  // The new arena was not handed out during a capture: outgrowing it frees it at once.
  (void)gpu.scratch(20 * kMiB);
  CHECK(gpu.retired_scratch_count() == 0);
  // 20 MiB in, 10 MiB out: 10 MiB more; kept, the outgrown arena would make it 20.
  CHECK(pool_used() - released < 20 * kMiB);
  CHECK(pool_used() - released >= 10 * kMiB);
}

TEST_CASE("multi-tensor AdamW equals per-tensor AdamW on the CPU across launches") {
  CudaBackend gpu;
  // 60 tensors (more than one launch's 48), of sizes from 0 to past a block's chunk.
  std::vector<std::vector<float>> w, g, m, v;
  for (unsigned i = 0; i < 60; ++i) {
    const std::size_t n = i == 7 ? 0 : (i * 7919u) % 20000u + (i == 3 ? 100000u : 0u);
    w.push_back(random_values(n, 100 + i));
    g.push_back(random_values(n, 200 + i));
    m.push_back(random_values(n, 300 + i, 0.1f));
    v.push_back(random_values(n, 400 + i, 0.1f));
    for (float& x : v.back()) x = x * x;
  }
  std::vector<Device> dw, dg, dm, dv;
  std::vector<muon::kernels::AdamWTensor> tensors;
  for (std::size_t i = 0; i < w.size(); ++i) {
    dw.emplace_back(gpu, w[i]);
    dg.emplace_back(gpu, g[i]);
    dm.emplace_back(gpu, m[i]);
    dv.emplace_back(gpu, v[i]);
  }
  for (std::size_t i = 0; i < w.size(); ++i)
    tensors.push_back({dw[i].data(), dg[i].data(), dm[i].data(), dv[i].data(), static_cast<std::int64_t>(w[i].size())});
  StepBlock block(gpu, muon::step_values({.lr = 3e-3, .weight_decay = 0.1}, 1.0, 0.8, 5));
  const muon::AdamWStep s{0.9f, 0.95f, 1e-8f, &block.host};
  gpu.adamw_many(tensors, {s.beta1, s.beta2, s.eps, block.on_device()});
  for (std::size_t i = 0; i < w.size(); ++i) {
    CAPTURE(i);
    ref::adamw(w[i], g[i], m[i], v[i], s);
    CHECK(relative_error(download(gpu, dw[i].span()), w[i]) < kElementwiseTolerance);
    CHECK(relative_error(download(gpu, dm[i].span()), m[i]) < kElementwiseTolerance);
    CHECK(relative_error(download(gpu, dv[i].span()), v[i]) < kElementwiseTolerance);
  }
}

TEST_CASE("the finite flag and sum_squares see NaN and Inf") {
  CudaBackend gpu;
  auto x = random_values(100000, 12);
  int* flag = nullptr;
  REQUIRE(cudaMalloc(&flag, sizeof(int)) == cudaSuccess);
  const auto flag_after = [&](const std::vector<float>& values) {
    Device dx(gpu, values);
    gpu.clear_flag(flag);
    gpu.flag_non_finite(dx.span(), flag);
    int host = -1;
    REQUIRE(cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, gpu.stream()) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(gpu.stream()) == cudaSuccess);
    CHECK(std::isfinite(gpu.sum_squares(dx.span())) == (host == 0));
    return host;
  };
  CHECK(flag_after(x) == 0);
  x[54321] = kNaN;
  CHECK(flag_after(x) == 1);
  x[54321] = std::numeric_limits<float>::infinity();
  x[99999] = -std::numeric_limits<float>::infinity();
  CHECK(flag_after(x) == 1);
  cudaFree(flag);
}

TEST_CASE("copy_each copies many pairs per launch, and sum_squares_each sums many spans with one synchronisation") {
  CudaBackend gpu;
  // 70 pairs (two launches of at most 64), sizes across chunk boundaries, one of them empty.
  std::vector<Device> from, to;
  std::vector<std::vector<float>> values;
  std::vector<std::pair<std::span<const float>, std::span<float>>> pairs;
  std::vector<std::span<const float>> spans;
  for (int k = 0; k < 70; ++k) {
    const std::int64_t n = k == 3 ? 0 : 1 + (k * 1237) % 9000;
    values.push_back(random_values(n, 100 + k));
    from.emplace_back(gpu, values.back());
    to.emplace_back(gpu, std::vector<float>(static_cast<std::size_t>(n), kNaN));
  }
  for (int k = 0; k < 70; ++k) {
    pairs.emplace_back(from[k].span(), to[k].span());
    spans.emplace_back(from[k].span());
  }
  gpu.copy_each(pairs);
  const std::vector<double> sums = gpu.sum_squares_each(spans);
  for (int k = 0; k < 70; ++k) {
    CHECK(download(gpu, to[k].span()) == values[k]);
    CHECK(sums[k] == doctest::Approx(gpu.sum_squares(from[k].span())).epsilon(1e-12));  // both sum in double
  }
  const std::pair<std::span<const float>, std::span<float>> mismatched[] = {{from[0].span(), to[1].span()}};
  CHECK_THROWS_AS(gpu.copy_each(mismatched), muon::ShapeMismatch);
}

TEST_CASE("scale_row_blocks scales exactly the blocks' rows in device memory") {
  // QK-clip's weight surgery (muon/row_scale.hpp) on the device: f·x is one rounding on either
  // side, so the result equals the host's bit for bit, and rows outside the blocks keep theirs.
  CudaBackend gpu;
  constexpr std::int64_t cols = 37, rows = 40;
  const auto before = random_values(rows * cols, 13);
  Device dv(gpu, before);
  const muon::RowBlockScale blocks[] = {{.first_row = 3, .rows = 5, .factor = 0.7310586f},
                                        {.first_row = 20, .rows = 1, .factor = 0.5f},
                                        {.first_row = 39, .rows = 1, .factor = 3.0f}};
  muon::scale_row_blocks(gpu, dv.span(), cols, blocks);
  auto expected = before;
  for (const muon::RowBlockScale& b : blocks)
    for (std::int64_t k = b.first_row * cols; k < (b.first_row + b.rows) * cols; ++k)
      expected[static_cast<std::size_t>(k)] = b.factor * before[static_cast<std::size_t>(k)];
  CHECK(download(gpu, dv.span()) == expected);
}

TEST_CASE("update: a bf16 update decays and moves fp32 parameters") {
  CudaBackend gpu;
  const auto w = random_values(5000, 13), u = random_values(5000, 14);
  std::vector<__nv_bfloat16> u16(u.size());
  for (std::size_t i = 0; i < u.size(); ++i) u16[i] = __float2bfloat16(u[i]);
  Device dw(gpu, w);
  __nv_bfloat16* du = nullptr;
  REQUIRE(cudaMalloc(&du, u16.size() * sizeof(__nv_bfloat16)) == cudaSuccess);
  REQUIRE(cudaMemcpy(du, u16.data(), u16.size() * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice) == cudaSuccess);
  StepBlock block(gpu, muon::step_values({.lr = 0.02, .weight_decay = 0.05}, 1.0, 1.0, 1));
  gpu.update(dw.span(), static_cast<const __nv_bfloat16*>(du), {1.0, block.on_device()});
  std::vector<float> expected(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) expected[i] = -0.02f * __bfloat162float(u16[i]) + 0.999f * w[i];
  CHECK(relative_error(download(gpu, dw.span()), expected) < kElementwiseTolerance);
  cudaFree(du);
}

TEST_CASE("Newton–Schulz on the GPU: batched equals looped and equals the Eigen backend") {
  // Wide, tall (right multiplication), 3:1 (Gram Newton–Schulz under NsMethod::automatic), and
  // 256-sided Grams, which split into 4 tiles of 64 (the others into 2 or none).
  for (const auto& [rows, cols] : {std::pair{48, 80}, {80, 48}, {32, 96}, {128, 256}, {256, 128}, {256, 384}})
    for (const auto precision : {NsPrecision::fp32, NsPrecision::bf16}) {
      CAPTURE(rows);
      CAPTURE(cols);
      CAPTURE(static_cast<int>(precision));
      CudaBackend gpu(CudaOptions{.ns_precision = precision, .symmetric_tile_min = 16});
      const std::int64_t batch = 4, size = rows * cols;
      const auto x = random_values(static_cast<std::size_t>(batch * size), 15);
      const muon::NsOptions options{};
      Device batched(gpu, x), looped(gpu, x);
      muon::orthogonalize(gpu, MatrixStack<float>{batched.data(), batch, rows, cols}, options);
      for (std::int64_t k = 0; k < batch; ++k)
        muon::orthogonalize(gpu, MatrixStack<float>{looped.data() + k * size, 1, rows, cols}, options);
      auto expected = x;
      ref::orthogonalize({expected.data(), batch, rows, cols}, options);
      const auto got = download(gpu, batched.span());
      // Batched and looped cuBLAS calls may pick other kernels, so the accumulation order differs.
      // Bounds: about twice what tests/reference/cuda_bf16_tolerances.py measures on a numpy
      // emulation of the same arithmetic. fp32: 3.8e-6 between accumulation orders, and against
      // Eigen. bf16 plain (fused) path: 0.028 between orders, 0.037 against fp32; bf16 Gram NS
      // (32×96, the portable per-operation path): 0.084–0.095 against fp32.
      const bool fp32 = precision == NsPrecision::fp32, gram_ns = muon::uses_gram_ns(options, rows, cols);
      const double order_bound = fp32 ? 1e-4 : gram_ns ? 0.2 : 6e-2;
      const double fp32_bound = fp32 ? 1e-4 : gram_ns ? 0.2 : 8e-2;
      CHECK(relative_error(download(gpu, looped.span()), got) < order_bound);
      CHECK(relative_error(got, expected) < fp32_bound);
      // A backend whose batched calls take two matrices at most runs the stack in two chunks.
      CudaBackend small(
          CudaOptions{.ns_precision = precision, .symmetric_tile_min = 16, .ns_batch_elements = 2 * size});
      REQUIRE(small.ns_batch_limit(rows, cols) == 2);
      Device chunked(small, x);
      muon::orthogonalize(small, MatrixStack<float>{chunked.data(), batch, rows, cols}, options);
      CHECK(relative_error(download(small, chunked.span()), got) < order_bound);
    }
}

namespace {

// A small hybrid table, on the host and on the device with the same values: a Muon matrix,
// a 3-D expert stack, an embedding (AdamW) and a norm (AdamW).
struct HostModel {
  std::vector<float> w = random_values(24 * 40, 21), experts = random_values(3 * 16 * 24, 22),
                     emb = random_values(50 * 8, 23), norm = std::vector<float>(8, 1.0f);
  std::vector<float> dw = random_values(w.size(), 24), dexperts = random_values(experts.size(), 25),
                     demb = random_values(emb.size(), 26), dnorm = random_values(norm.size(), 27);
  std::vector<muon::Parameter> table() {
    return {{"w", muon::Role::matrix, {w.data(), {24, 40}}, {dw.data(), {24, 40}}},
            {"experts", muon::Role::matrix, {experts.data(), {3, 16, 24}}, {dexperts.data(), {3, 16, 24}}},
            {"emb", muon::Role::embedding, {emb.data(), {50, 8}}, {demb.data(), {50, 8}}},
            {"norm", muon::Role::norm, {norm.data(), {8}}, {dnorm.data(), {8}}}};
  }
};

struct DeviceModel {
  DeviceModel(CudaBackend& gpu, const HostModel& h)
      : w(gpu, h.w),
        experts(gpu, h.experts),
        emb(gpu, h.emb),
        norm(gpu, h.norm),
        dw(gpu, h.dw),
        dexperts(gpu, h.dexperts),
        demb(gpu, h.demb),
        dnorm(gpu, h.dnorm) {}
  std::vector<muon::Parameter> table() {
    return {{"w", muon::Role::matrix, {w.data(), {24, 40}}, {dw.data(), {24, 40}}},
            {"experts", muon::Role::matrix, {experts.data(), {3, 16, 24}}, {dexperts.data(), {3, 16, 24}}},
            {"emb", muon::Role::embedding, {emb.data(), {50, 8}}, {demb.data(), {50, 8}}},
            {"norm", muon::Role::norm, {norm.data(), {8}}, {dnorm.data(), {8}}}};
  }
  Device w, experts, emb, norm, dw, dexperts, demb, dnorm;
};

}  // namespace

namespace {

void check_steps_equal_eigen(const muon::Options& options) {
  HostModel cpu_model;
  const HostModel before = cpu_model;
  ref::optimizer_steps(cpu_model.table(), options, 3);
  for (const auto precision : {NsPrecision::fp32, NsPrecision::bf16}) {
    CAPTURE(static_cast<int>(precision));
    CudaBackend gpu(CudaOptions{.ns_precision = precision});
    DeviceModel d(gpu, before);
    muon::Optimizer<CudaBackend> opt(d.table(), options, gpu);
    for (int i = 0; i < 3; ++i) (void)opt.step();
    // Compare what the steps changed, relative to the largest change: fp32 as the Eigen-vs-toy
    // test (1e-4); bf16 Newton–Schulz moves each Muon update by up to 3.7% (24×40 and 16×24 in
    // tests/reference/cuda_bf16_tolerances.py), so 8e-2; AdamW parameters do not see the NS precision.
    const auto delta = [](const std::vector<float>& after, const std::vector<float>& start) {
      std::vector<float> out(after.size());
      for (std::size_t i = 0; i < out.size(); ++i) out[i] = after[i] - start[i];
      return out;
    };
    const bool fp32 = precision == NsPrecision::fp32;
    CHECK(relative_error(delta(download(gpu, d.w.span()), before.w), delta(cpu_model.w, before.w)) <
          (fp32 ? 1e-4 : 8e-2));
    CHECK(relative_error(delta(download(gpu, d.experts.span()), before.experts),
                         delta(cpu_model.experts, before.experts)) < (fp32 ? 1e-4 : 8e-2));
    CHECK(relative_error(delta(download(gpu, d.emb.span()), before.emb), delta(cpu_model.emb, before.emb)) < 1e-4);
    CHECK(relative_error(delta(download(gpu, d.norm.span()), before.norm), delta(cpu_model.norm, before.norm)) < 1e-4);
  }
}

}  // namespace

TEST_CASE("three optimizer steps on the GPU equal the Eigen backend's") {
  check_steps_equal_eigen({.lr = 0.02, .max_grad_norm = 1.0});
}
// NorMuon adds the row kernel and a second Frobenius normalisation; the bounds above hold.
TEST_CASE("three NorMuon steps on the GPU equal the Eigen backend's") {
  check_steps_equal_eigen({.lr = 0.02, .muon = {.normuon = {.enabled = true}}, .max_grad_norm = 1.0});
}

TEST_CASE("the one-synchronisation gradient check equals Optimizer::check_gradients") {
  CudaBackend gpu;
  // 70 gradients of mixed sizes: two launches of the multi-tensor kernels.
  std::vector<Device> values, grads;
  std::vector<muon::Parameter> table;
  for (int i = 0; i < 70; ++i) {
    const std::int64_t rows = 1 + (i * 37) % 300, cols = i == 5 ? 40000 : 1 + (i * 11) % 90;
    values.emplace_back(gpu, std::vector<float>(static_cast<std::size_t>(rows * cols), 0.5f));
    grads.emplace_back(gpu, random_values(static_cast<std::size_t>(rows * cols), 500 + i));
  }
  for (int i = 0; i < 70; ++i) {
    const std::int64_t rows = 1 + (i * 37) % 300, cols = i == 5 ? 40000 : 1 + (i * 11) % 90;
    table.push_back(
        {"p" + std::to_string(i), muon::Role::norm, {values[i].data(), {rows, cols}}, {grads[i].data(), {rows, cols}}});
  }
  muon::Optimizer<CudaBackend> opt(table, {}, gpu);
  const muon::GradientCheck per_parameter = opt.check_gradients();
  const muon::GradientCheck at_once = muon::check_gradients_on_device(gpu, opt.parameters());
  CHECK_FALSE(at_once.non_finite.has_value());
  // Both sum in double, in other orders.
  CHECK(at_once.sum_squares == doctest::Approx(per_parameter.sum_squares).epsilon(1e-12));
  // A NaN in p66 and an Inf in p40: both name the first in table order.
  gpu.from_host(std::vector<float>{kNaN}, grads[66].span().first(1));
  gpu.from_host(std::vector<float>{std::numeric_limits<float>::infinity()}, grads[40].span().last(1));
  const muon::GradientCheck bad = muon::check_gradients_on_device(gpu, opt.parameters());
  REQUIRE(bad.non_finite.has_value());
  CHECK(*bad.non_finite == "p40");
  CHECK(*opt.check_gradients().non_finite == "p40");
}

TEST_CASE("a step captured once in a CUDA graph and replayed 3 times equals 3 eager steps") {
  CudaBackend gpu;
  const HostModel host;
  DeviceModel eager_model(gpu, host), graph_model(gpu, host);
  // Every per-step number moves: warmup then cosine lr, clipping on every step, decoupled decay,
  // AdamW's bias corrections. None is a kernel argument: the kernels read the step block.
  const muon::Options options{.lr = 0.02,
                              .weight_decay = 0.1,
                              .schedule = muon::WarmupCosine{.warmup_steps = 2, .total_steps = 5, .final_ratio = 0.1},
                              .max_grad_norm = 0.5};
  constexpr int kSteps = 3;
  muon::Optimizer<CudaBackend> eager(eager_model.table(), options, gpu), captured(graph_model.table(), options, gpu);
  // The eager steps run first and size the backend's scratch, which a capture may not grow.
  for (int i = 0; i < kSteps; ++i) CHECK(eager.step().grad_scale < 1.0);

  // The gradient check reads a norm on the host, so it and begin_step stay outside the graph;
  // apply() (the step block's copy from pinned memory, then the update) is what it holds.
  (void)captured.begin_step(captured.check_gradients());
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(gpu.stream(), cudaStreamCaptureModeGlobal) == cudaSuccess);
  captured.apply();
  REQUIRE(cudaStreamEndCapture(gpu.stream(), &graph) == cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  CHECK(download(gpu, graph_model.w.span()) == host.w);  // capturing ran nothing
  for (int i = 0; i < kSteps; ++i) {
    if (i > 0) (void)captured.begin_step(captured.check_gradients());
    REQUIRE(cudaGraphLaunch(exec, gpu.stream()) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(gpu.stream()) == cudaSuccess);
  }
  // The same kernels and cuBLAS calls on the same data in the same order: bitwise equal.
  CHECK(captured.step_count() == kSteps);
  CHECK(download(gpu, graph_model.w.span()) == download(gpu, eager_model.w.span()));
  CHECK(download(gpu, graph_model.experts.span()) == download(gpu, eager_model.experts.span()));
  CHECK(download(gpu, graph_model.emb.span()) == download(gpu, eager_model.emb.span()));
  CHECK(download(gpu, graph_model.norm.span()) == download(gpu, eager_model.norm.span()));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_SUITE_END();

int main(int argc, char** argv) { return muon::test::run_gpu_tests(argc, argv, "the CUDA backend tests"); }
