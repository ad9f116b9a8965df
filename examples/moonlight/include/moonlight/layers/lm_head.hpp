// moonlight/layers/lm_head.hpp: the final RMSNorm and the LM head (tied to the embedding table
// when tie_word_embeddings), and the mean next-token cross-entropy over their logits, forward and
// backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <type_traits>

#include "moonlight/layers/kernels.hpp"
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
// `sequence_length` rows, summed over the sequences the rows stack (one sequence by default). The
// logits are scratch: with `gradient` they are overwritten with d loss / d logits = (softmax −
// one-hot) / T, T the sequence length; without, with their exponentials. fp32 runs in
// layers/kernels.hpp's loops.
template <class S>
S cross_entropy(Mat<S>& logits, std::span<const std::int32_t> targets, bool gradient, std::int64_t sequence_length = 0) {
  const std::int64_t rows = logits.rows(), vocab = logits.cols(), T = sequence_length > 0 ? sequence_length : rows;
  S loss = 0;
  for (std::int64_t t = 0; t < rows; ++t) {
    S* row = logits.data() + t * vocab;
    const std::int32_t target = targets[static_cast<std::size_t>(t)];
    S sum = 0;
    if constexpr (std::is_same_v<S, float>) {
      const LayerKernels& k = layer_kernels();
      sum = k.exp_sum(row, vocab, k.max(row, vocab));
    } else {
      const S m = *std::max_element(row, row + vocab);
      for (std::int64_t v = 0; v < vocab; ++v) sum += row[v] = std::exp(row[v] - m);
    }
    loss -= std::log(row[target] / sum);
    if (gradient) {
      const S scale = S(1) / (sum * static_cast<S>(T));
      for (std::int64_t v = 0; v < vocab; ++v) row[v] *= scale;
      row[target] -= S(1) / static_cast<S>(T);
    }
  }
  return loss / static_cast<S>(T);
}

}  // namespace moonlight::layers
