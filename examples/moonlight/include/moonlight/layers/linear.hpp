// moonlight/layers/linear.hpp: the weight view every layer reads, and the linear layer
// y = x·Wᵀ (torch's nn.Linear without bias) with its backward.
//
// The layers (llm.c-style: each block's forward and backward side by side, in this directory) are
// templated on the scalar: float for training and inference, double for the finite-difference
// checks of test_backward.cpp. A forward given a tape saves what its backward needs; without one
// (inference, evaluation) it saves nothing. Weights are bound once per pass (network.hpp) and are
// read-only; the backward adds into their gradient slots.
//
//   moonlight::layers::Weight<float> w{values, grads, out, in};
//   Mat<float> y = linear(x, w);                  // [T, out]
//   Mat<float> dx = linear_backward(x, w, dy);    // and w.grad += dyᵀ·x
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <type_traits>

#include "moonlight/layers/half_matrix.hpp"
#include "moonlight/layers/kernels.hpp"
#include "muon/cpu/blas.hpp"

namespace moonlight::layers {

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using Vec = Eigen::Matrix<S, 1, Eigen::Dynamic>;

// One weight tensor as a [rows, cols] row-major matrix (a vector is one row): its values and, when
// training, its gradient slot (null for inference). For inference from a BF16 or F16 checkpoint a
// matrix that only products and row look-ups read is `stored` instead, in the checkpoint's memory
// (half_matrix.hpp), and `value` is null.
template <class S>
struct Weight {
  const S* value = nullptr;
  S* grad = nullptr;
  std::int64_t rows = 0, cols = 0;
  HalfMatrix stored{};

  [[nodiscard]] Eigen::Map<const Mat<S>> w() const { return {value, rows, cols}; }
  [[nodiscard]] Eigen::Map<Mat<S>> g() const { return {grad, rows, cols}; }
};

// c ← op(a)·op(b) + β·c for row-major matrices or blocks of them (any row stride): the attention's
// per-head products. fp32 goes to muon/cpu/blas.hpp (kernels chosen for the CPU at run time),
// fp64 to Eigen.
template <class A, class B, class C>
void product(const A& a, muon::Transpose ta, const B& b, muon::Transpose tb, C&& c,
             typename std::remove_reference_t<C>::Scalar beta = 0) {
  using muon::Transpose;
  using S = typename std::remove_reference_t<C>::Scalar;
  if constexpr (std::is_same_v<S, float>) {
    const std::int64_t k = ta == Transpose::no ? a.cols() : a.rows();
    muon::cpu::gemm(ta, tb, c.rows(), c.cols(), k, 1.0f, a.data(), a.outerStride(), b.data(), b.outerStride(), beta,
                    c.data(), c.outerStride());
  } else {
    if (beta == S(0)) c.setZero();
    else c *= beta;
    if (ta == Transpose::no && tb == Transpose::no) c.noalias() += a * b;
    else if (ta == Transpose::no) c.noalias() += a * b.transpose();
    else if (tb == Transpose::no) c.noalias() += a.transpose() * b;
    else c.noalias() += a.transpose() * b.transpose();
  }
}

// y = x·Wᵀ. These products are most of a pass: in fp32 they go to muon/cpu/blas.hpp, that is to
// OpenBLAS where muon has it, whose kernels are chosen for the CPU at run time (this code is
// compiled for the baseline ISA, where Eigen's products are far slower); one token (decode) is a
// matrix-vector product, a few (an expert's share of a prompt) go to layers/kernels.hpp's
// few_rows_product. fp64, for the finite-difference checks, stays in Eigen.
template <class S>
Mat<S> linear(const Mat<S>& x, const Weight<S>& W) {
  if constexpr (std::is_same_v<S, float>) {
    Mat<S> y(x.rows(), W.rows);
    if (W.stored.data != nullptr)
      half_linear(x.data(), x.rows(), W.stored, y.data());
    else if (x.rows() == 1)
      muon::cpu::gemv(W.rows, W.cols, 1.0f, W.value, W.cols, x.data(), 0.0f, y.data());
    else if (const LayerKernels& k = layer_kernels(); x.rows() <= k.few_rows)
      k.few_rows_product(x.data(), x.rows(), x.cols(), W.value, W.rows, y.data());
    else
      muon::cpu::gemm(muon::Transpose::no, muon::Transpose::yes, x.rows(), W.rows, x.cols(), 1.0f, x.data(), x.cols(),
                      W.value, W.cols, 0.0f, y.data(), W.rows);
    return y;
  } else {
    return x * W.w().transpose();
  }
}

// dx = dy·W, and W.grad += dyᵀ·x.
template <class S>
Mat<S> linear_backward(const Mat<S>& x, const Weight<S>& W, const Mat<S>& dy) {
  if constexpr (std::is_same_v<S, float>) {
    Mat<S> dx(dy.rows(), W.cols);
    muon::cpu::gemm(muon::Transpose::yes, muon::Transpose::no, W.rows, W.cols, dy.rows(), 1.0f, dy.data(), W.rows,
                    x.data(), W.cols, 1.0f, W.grad, W.cols);
    muon::cpu::gemm(muon::Transpose::no, muon::Transpose::no, dy.rows(), W.cols, W.rows, 1.0f, dy.data(), W.rows,
                    W.value, W.cols, 0.0f, dx.data(), W.cols);
    return dx;
  } else {
    W.g().noalias() += dy.transpose() * x;
    return dy * W.w();
  }
}

}  // namespace moonlight::layers
