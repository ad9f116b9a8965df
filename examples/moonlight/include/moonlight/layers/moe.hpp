// moonlight/layers/moe.hpp: the MoE block of layers ≥ first_k_dense_replace: the router's chosen
// experts, each run once on the tokens routed to it and weighted, plus the shared experts
// (docs/moonlight-architecture.md §3.6), forward and backward.
#pragma once

#include <cstdint>
#include <vector>

#include "moonlight/config.hpp"
#include "moonlight/layers/linear.hpp"
#include "moonlight/layers/mlp.hpp"
#include "moonlight/layers/router.hpp"

namespace moonlight::layers {

template <class S>
struct Moe {
  const Config* c = nullptr;
  Router<S> router;
  std::vector<SwiGlu<S>> experts;
  SwiGlu<S> shared;  // when n_shared_experts > 0

  struct Tape {
    Mat<S> x;
    Routing<S> routing;
    std::vector<typename SwiGlu<S>::Tape> experts;
    std::vector<Mat<S>> expert_out;  // per expert, unweighted
    typename SwiGlu<S>::Tape shared;
    S aux_alpha = 0;  // α of the sequence-wise balance loss (0: off)
    S aux_value = 0;  // α·L_Bal of this layer
  };

  // `sequences`: how many sequences of equal length x's rows stack (the balance loss is per
  // sequence, summed).
  Mat<S> forward(const Mat<S>& x, Tape* tape = nullptr, S aux_alpha = 0, std::int64_t sequences = 1) const {
    const std::int64_t T = x.rows(), E = c->n_routed_experts;
    Routing<S> routing = router.route(x, sequences);
    if (tape) tape->experts.assign(static_cast<std::size_t>(E), {});
    // The experts in parallel (inside a pass that already runs per thread, as training's, this is
    // one thread): each one's products then run single-threaded (OpenBLAS does so in an active
    // OpenMP region), which beats threading each small GEMM. Their outputs are added in expert
    // order after, so the sum is the same for any thread count.
    std::vector<Mat<S>> outs(static_cast<std::size_t>(E));
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t e = 0; e < E; ++e) {
      const auto& list = routing.tokens_of[e];
      if (list.empty()) continue;
      Mat<S> xe(static_cast<std::int64_t>(list.size()), c->hidden_size);
      for (std::size_t i = 0; i < list.size(); ++i) xe.row(static_cast<std::int64_t>(i)) = x.row(list[i]);
      outs[e] = experts[e].forward(xe, tape ? &tape->experts[e] : nullptr);
    }
    Mat<S> y = Mat<S>::Zero(T, c->hidden_size);
    for (std::int64_t e = 0; e < E; ++e) {
      const auto& list = routing.tokens_of[e];
      for (std::size_t i = 0; i < list.size(); ++i)
        y.row(list[i]) += router.weight(routing, list[i], e) * outs[e].row(static_cast<std::int64_t>(i));
    }
    if (c->n_shared_experts > 0) y += shared.forward(x, tape ? &tape->shared : nullptr);
    if (tape) {
      tape->x = x;
      tape->expert_out = std::move(outs);
      tape->aux_alpha = aux_alpha;
      tape->aux_value = aux_alpha > S(0) ? aux_alpha * router.balance_loss(routing) : S(0);
      tape->routing = std::move(routing);
    }
    return y;
  }

  Mat<S> backward(const Tape& tape, const Mat<S>& dy) const {
    const std::int64_t T = tape.x.rows(), E = c->n_routed_experts;
    const Routing<S>& routing = tape.routing;
    Mat<S> dx = c->n_shared_experts > 0 ? shared.backward(tape.shared, dy) : Mat<S>::Zero(T, c->hidden_size);
    Mat<S> dweight = Mat<S>::Zero(T, E);  // d loss / d (routing weight of expert e for token t)
    std::vector<Mat<S>> dxs(static_cast<std::size_t>(E));
    // In parallel as in forward: each expert writes its own column of dweight and its own gradients.
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t e = 0; e < E; ++e) {
      const auto& list = routing.tokens_of[e];
      if (list.empty()) continue;
      Mat<S> dye(static_cast<std::int64_t>(list.size()), c->hidden_size);
      for (std::size_t i = 0; i < list.size(); ++i) {
        const auto row = static_cast<std::int64_t>(i);
        dweight(list[i], e) = dy.row(list[i]).dot(tape.expert_out[e].row(row));
        dye.row(row) = router.weight(routing, list[i], e) * dy.row(list[i]);
      }
      dxs[e] = experts[e].backward(tape.experts[e], dye);
    }
    for (std::int64_t e = 0; e < E; ++e) {
      const auto& list = routing.tokens_of[e];
      for (std::size_t i = 0; i < list.size(); ++i) dx.row(list[i]) += dxs[e].row(static_cast<std::int64_t>(i));
    }
    dx += router.backward(tape.x, routing, dweight, tape.aux_alpha);
    return dx;
  }
};

}  // namespace moonlight::layers
