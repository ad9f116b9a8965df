// moonlight/layers/rms_norm.hpp: RMSNorm over rows, y = w ⊙ x̂ with x̂ = x / sqrt(mean(x²) + eps),
// and its backward (docs/moonlight-architecture.md §3). mean(x²) is summed in double, as the
// transformers reference's fp32 mean is closest to; kv_a_layernorm and q_a_layernorm use eps 1e-6
// (Config::latent_norm_eps), the others rms_norm_eps.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "moonlight/layers/linear.hpp"

namespace moonlight::layers {

template <class S>
struct RmsNorm {
  Weight<S> weight;  // [1, width]
  double eps = 0.0;

  struct Tape {
    Mat<S> xhat;
    std::vector<S> inv;  // 1 / rms per row
  };

  Mat<S> forward(const Mat<S>& x, Tape* tape = nullptr) const {
    const std::int64_t rows = x.rows(), cols = x.cols();
    Mat<S> y(rows, cols);
    if (tape) {
      tape->xhat.resize(rows, cols);
      tape->inv.resize(static_cast<std::size_t>(rows));
    }
    const S* w = weight.value;
    for (std::int64_t t = 0; t < rows; ++t) {
      const S* r = x.data() + t * cols;
      double sum = 0.0;
      for (std::int64_t i = 0; i < cols; ++i) sum += static_cast<double>(r[i]) * static_cast<double>(r[i]);
      const auto inv = static_cast<S>(1.0 / std::sqrt(sum / static_cast<double>(cols) + eps));
      S* out = y.data() + t * cols;
      S* xhat = tape ? tape->xhat.data() + t * cols : nullptr;
      for (std::int64_t i = 0; i < cols; ++i) {
        const S v = r[i] * inv;
        if (xhat) xhat[i] = v;
        out[i] = w[i] * v;
      }
      if (tape) tape->inv[static_cast<std::size_t>(t)] = inv;
    }
    return y;
  }

  // dx = inv · (dx̂ − x̂ · mean(dx̂ ⊙ x̂)) with dx̂ = dy ⊙ w; and dw += Σ_t dy ⊙ x̂.
  Mat<S> backward(const Tape& tape, const Mat<S>& dy) const {
    const auto w = weight.w();
    weight.g() += dy.cwiseProduct(tape.xhat).colwise().sum();
    Mat<S> dx(dy.rows(), dy.cols());
    for (std::int64_t t = 0; t < dy.rows(); ++t) {
      const Vec<S> dxhat = dy.row(t).cwiseProduct(w);
      const S mean = dxhat.dot(tape.xhat.row(t)) / static_cast<S>(dy.cols());
      dx.row(t) = tape.inv[static_cast<std::size_t>(t)] * (dxhat - mean * tape.xhat.row(t));
    }
    return dx;
  }
};

}  // namespace moonlight::layers
