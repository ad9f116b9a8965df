// moonlight/layers/lm_head.hpp: the final RMSNorm and the LM head (tied to the embedding table
// when tie_word_embeddings), and the mean next-token cross-entropy over their logits, forward and
// backward.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>

#include "moonlight/layers/linear.hpp"
#include "moonlight/layers/rms_norm.hpp"

namespace moonlight::layers {

template <class S>
struct LmHead {
  RmsNorm<S> norm;
  Weight<S> head;  // [vocab, hidden]

  struct Tape {
    typename RmsNorm<S>::Tape norm;
    Mat<S> hn;  // the normalised hidden state
  };

  Mat<S> forward(const Mat<S>& h, Tape* tape = nullptr) const {
    Mat<S> hn = norm.forward(h, tape ? &tape->norm : nullptr);
    Mat<S> logits = linear(hn, head);
    if (tape) tape->hn = std::move(hn);
    return logits;
  }

  // d loss / d h, given d loss / d logits.
  Mat<S> backward(const Tape& tape, const Mat<S>& dlogits) const {
    return norm.backward(tape.norm, linear_backward(tape.hn, head, dlogits));
  }
};

// Mean cross-entropy of `logits` [rows, vocab] against `targets` (one id per row), per sequence of
// `sequence_length` rows, summed over the sequences the rows stack (one sequence by default). With
// `gradient`, the logits are overwritten with d loss / d logits = (softmax − one-hot) / T, T the
// sequence length.
template <class S>
S cross_entropy(Mat<S>& logits, std::span<const std::int32_t> targets, bool gradient, std::int64_t sequence_length = 0) {
  const std::int64_t rows = logits.rows(), T = sequence_length > 0 ? sequence_length : rows;
  S loss = 0;
  for (std::int64_t t = 0; t < rows; ++t) {
    auto row = logits.row(t);
    const std::int32_t target = targets[static_cast<std::size_t>(t)];
    const Vec<S> e = (row.array() - row.maxCoeff()).exp();
    const S sum = e.sum();
    loss -= std::log(e(target) / sum);
    if (gradient) {
      row = e / (sum * static_cast<S>(T));
      row(target) -= S(1) / static_cast<S>(T);
    }
  }
  return loss / static_cast<S>(T);
}

}  // namespace moonlight::layers
