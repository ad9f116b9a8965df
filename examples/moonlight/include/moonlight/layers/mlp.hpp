// moonlight/layers/mlp.hpp: the SwiGLU MLP, down(silu(x·gateᵀ) ⊙ x·upᵀ), of the dense layers, of
// each routed expert and of the shared experts (docs/moonlight-architecture.md §3.5), forward and
// backward. fp32 runs the gate in layers/kernels.hpp's loops (chosen for the CPU at run time),
// fp64, for the finite-difference checks, in the scalar code here.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "moonlight/layers/kernels.hpp"
#include "moonlight/layers/linear.hpp"

namespace moonlight::layers {

template <class S>
S sigmoid(S z) {
  return S(1) / (S(1) + std::exp(-z));
}

template <class S>
struct SwiGlu {
  Weight<S> gate, up, down;

  struct Tape {
    Mat<S> x, g, u, a;  // input, gate and up projections, silu(g) ⊙ u
  };

  Mat<S> forward(const Mat<S>& x, Tape* tape = nullptr) const {
    Mat<S> g = linear(x, gate);
    Mat<S> u = linear(x, up);
    Mat<S> a(g.rows(), g.cols());
    if constexpr (std::is_same_v<S, float>)
      layer_kernels().silu_mul(g.data(), u.data(), a.data(), g.size());
    else
      a = g.unaryExpr([](S z) { return z * sigmoid(z); }).cwiseProduct(u);
    Mat<S> y = linear(a, down);
    if (tape) *tape = {x, std::move(g), std::move(u), std::move(a)};
    return y;
  }

  Mat<S> backward(const Tape& tape, const Mat<S>& dy) const {
    const Mat<S> da = linear_backward(tape.a, down, dy);
    Mat<S> dg(tape.g.rows(), tape.g.cols()), du(tape.u.rows(), tape.u.cols());
    if constexpr (std::is_same_v<S, float>) {
      layer_kernels().silu_mul_backward(tape.g.data(), tape.u.data(), da.data(), dg.data(), du.data(), tape.g.size());
    } else {
      for (std::int64_t i = 0; i < tape.g.size(); ++i) {
        const S z = tape.g.data()[i], s = sigmoid(z);
        du.data()[i] = da.data()[i] * z * s;
        dg.data()[i] = da.data()[i] * tape.u.data()[i] * s * (S(1) + z * (S(1) - s));  // silu'(z)
      }
    }
    Mat<S> dx = linear_backward(tape.x, gate, dg);
    dx += linear_backward(tape.x, up, du);
    return dx;
  }
};

}  // namespace moonlight::layers
