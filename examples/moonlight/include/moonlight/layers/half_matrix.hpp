// moonlight/layers/half_matrix.hpp: products with a BF16 or F16 weight matrix as a checkpoint
// stores it (memory-mapped, never widened as a whole), in fp32 arithmetic.
//
// Inference reads the weights where the checkpoint keeps them, so a loaded model's resident
// memory is about the checkpoint's size (docs/moonlight-architecture.md §4.1). One token (decode) is
// a matrix-vector product that widens each weight as it multiplies it; more tokens (prefill) widen
// a tile of rows at a time into fp32 and hand it to the fp32 GEMM, whose work per weight grows
// with the number of tokens while the widening does not.
//
//   moonlight::layers::half_linear(x, tokens, {data, Half::bf16, out, in}, y);  // y = x·Wᵀ
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <vector>

#include "muon/cpu/blas.hpp"
#include "muon/io/safetensors.hpp"

namespace moonlight::layers {

enum class Half : std::uint8_t { bf16, f16 };

// A [rows, cols] row-major matrix of 16-bit floats; `data` null: none.
struct HalfMatrix {
  const std::uint16_t* data = nullptr;
  Half kind = Half::bf16;
  std::int64_t rows = 0, cols = 0;
};

inline float widen(std::uint16_t h, Half kind) {
  return kind == Half::bf16 ? std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16)
                            : muon::safetensors::detail::f16_to_float(h);
}

// out[n, cols] ← rows [first, first + n) of w, in fp32.
inline void widen_rows(const HalfMatrix& w, std::int64_t first, std::int64_t n, float* out) {
  const std::uint16_t* in = w.data + first * w.cols;
  const std::int64_t count = n * w.cols;
  if (w.kind == Half::bf16) {
    for (std::int64_t i = 0; i < count; ++i) out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(in[i]) << 16);
  } else {
    for (std::int64_t i = 0; i < count; ++i) out[i] = muon::safetensors::detail::f16_to_float(in[i]);
  }
}

// Σ_i widen(w[i])·x[i] over n entries, in 16 independent fp32 partial sums (which the compiler
// keeps in vector registers) added at the end: the same value whatever the thread count.
template <Half kind>
float half_dot(const std::uint16_t* w, const float* x, std::int64_t n) {
  constexpr std::int64_t kLanes = 16;
  float lane[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (std::int64_t j = 0; j < kLanes; ++j) lane[j] += widen(w[i + j], kind) * x[i + j];
  float sum = 0.0f;
  for (; i < n; ++i) sum += widen(w[i], kind) * x[i];
  for (const float v : lane) sum += v;
  return sum;
}

// y[tokens, w.rows] = x[tokens, w.cols] · wᵀ.
inline void half_linear(const float* x, std::int64_t tokens, const HalfMatrix& w, float* y) {
  if (tokens == 1) {
#pragma omp parallel for schedule(static) if (w.rows * w.cols > (1 << 16))
    for (std::int64_t o = 0; o < w.rows; ++o)
      y[o] = w.kind == Half::bf16 ? half_dot<Half::bf16>(w.data + o * w.cols, x, w.cols)
                                  : half_dot<Half::f16>(w.data + o * w.cols, x, w.cols);
    return;
  }
  // 256 rows of 2048 are a 2 MiB tile: large enough for the GEMM's blocking, small enough to stay
  // in cache while it runs.
  constexpr std::int64_t kTileRows = 256;
  thread_local std::vector<float> tile;
  tile.resize(static_cast<std::size_t>(std::min(kTileRows, w.rows) * w.cols));
  for (std::int64_t first = 0; first < w.rows; first += kTileRows) {
    const std::int64_t n = std::min(kTileRows, w.rows - first);
    widen_rows(w, first, n, tile.data());
    muon::cpu::gemm(muon::Transpose::no, muon::Transpose::yes, tokens, n, w.cols, 1.0f, x, w.cols, tile.data(), w.cols,
                    0.0f, y + first, w.rows);
  }
}

}  // namespace moonlight::layers
