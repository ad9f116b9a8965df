// moonlight/layers/router.hpp: the sigmoid router of the MoE layers with the aux-loss-free
// correction bias (docs/moonlight-architecture.md §6), DeepSeek-V3's optional sequence-wise
// balance loss, and their backward.
//
// Experts are chosen by sigmoid score + e_score_correction_bias (group-limited when n_group > 1)
// and weighted by the unbiased scores, normalised over the chosen ones (norm_topk_prob) and times
// routed_scaling_factor. The selection and the bias get no gradient (the bias is moved by the
// balancing rule, balancing.hpp), as in transformers' DeepseekV3; the gradient reaches the router
// logits through the chosen experts' weights, and, with the balance loss, through every score.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <numeric>
#include <vector>

#include "moonlight/config.hpp"
#include "moonlight/layers/linear.hpp"
#include "moonlight/layers/mlp.hpp"

namespace moonlight::layers {

// Where one pass's tokens go. A pass may stack several sequences of equal length (training):
// the balance loss is per sequence.
template <class S>
struct Routing {
  Mat<S> score;                                      // sigmoid(router logits) [T, E]
  std::vector<std::vector<std::int64_t>> top;        // per token: the chosen experts, best first
  std::vector<S> norm;                               // per token: 1 / (Σ chosen scores + 1e-20), or 1
  std::vector<std::vector<std::int64_t>> tokens_of;  // per expert: its tokens, in order
  std::int64_t sequence_length = 0;                  // rows per sequence
  std::vector<std::int64_t> sequence_counts;         // [sequence, expert]: tokens routed there
};

template <class S>
struct Router {
  const Config* c = nullptr;
  Weight<S> gate;  // [E, hidden]
  Weight<S> bias;  // e_score_correction_bias [1, E]: selection only, its gradient slot stays 0

  // Routes the rows of x, `sequences` sequences of equal length stacked.
  Routing<S> route(const Mat<S>& x, std::int64_t sequences = 1) const {
    const std::int64_t T = x.rows(), E = c->n_routed_experts, k = c->num_experts_per_tok;
    const std::int64_t per_group = E / c->n_group;
    Routing<S> r;
    r.score = linear(x, gate).unaryExpr([](S z) { return sigmoid(z); });  // fp32, as transformers
    r.top.assign(static_cast<std::size_t>(T), {});
    r.norm.assign(static_cast<std::size_t>(T), S(1));
    r.tokens_of.assign(static_cast<std::size_t>(E), {});
    r.sequence_length = T / sequences;
    r.sequence_counts.assign(static_cast<std::size_t>(sequences * E), 0);
    std::vector<S> choice(static_cast<std::size_t>(E)), group_score(static_cast<std::size_t>(c->n_group));
    std::vector<std::int64_t> order(choice.size()), groups(group_score.size());
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t e = 0; e < E; ++e) choice[e] = r.score(t, e) + bias.value[e];
      if (c->n_group > 1) {
        // Group score: the sum of its two best choice scores; keep topk_group groups and set the
        // others' choice scores to 0, as transformers does (DeepSeek's inference code uses -inf).
        for (std::int64_t g = 0; g < c->n_group; ++g) {
          std::vector<S> members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
          std::partial_sort(members.begin(), members.begin() + 2, members.end(), std::greater<>());
          group_score[g] = members[0] + members[1];
        }
        std::iota(groups.begin(), groups.end(), 0);
        std::partial_sort(groups.begin(), groups.begin() + c->topk_group, groups.end(), [&](std::int64_t a, std::int64_t b) {
          return group_score[a] > group_score[b] || (group_score[a] == group_score[b] && a < b);
        });
        std::vector<bool> keep(group_score.size(), false);
        for (std::int64_t i = 0; i < c->topk_group; ++i) keep[groups[i]] = true;
        for (std::int64_t e = 0; e < E; ++e)
          if (!keep[e / per_group]) choice[e] = S(0);
      }
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](std::int64_t a, std::int64_t b) {
        return choice[a] > choice[b] || (choice[a] == choice[b] && a < b);
      });
      S sum = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        r.top[t].push_back(order[j]);
        r.tokens_of[order[j]].push_back(t);
        ++r.sequence_counts[static_cast<std::size_t>(t / r.sequence_length * E + order[j])];
        sum += r.score(t, order[j]);
      }
      if (c->norm_topk_prob) r.norm[t] = S(1) / (sum + static_cast<S>(1e-20));
    }
    return r;
  }

  // The weight of expert e's output for token t (e chosen for t).
  S weight(const Routing<S>& r, std::int64_t t, std::int64_t e) const {
    return r.score(t, e) * r.norm[static_cast<std::size_t>(t)] * static_cast<S>(c->routed_scaling_factor);
  }

  // f_i = N_r/(K_r·T)·(tokens of token t's sequence routed to i), T the sequence's length: a
  // constant, the selection has no gradient.
  S balance_fraction(const Routing<S>& r, std::int64_t t, std::int64_t e) const {
    const std::int64_t E = c->n_routed_experts;
    const auto count = r.sequence_counts[static_cast<std::size_t>(t / r.sequence_length * E + e)];
    return static_cast<S>(E) * static_cast<S>(count) /
           (static_cast<S>(c->num_experts_per_tok) * static_cast<S>(r.sequence_length));
  }

  // L_Bal = Σ_i f_i·P_i with P_i = mean_t s_{t,i} / Σ_j s_{t,j} over all experts, per sequence;
  // summed over the sequences of the pass.
  S balance_loss(const Routing<S>& r) const {
    const std::int64_t T = r.score.rows();
    S total = 0;
    for (std::int64_t t = 0; t < T; ++t) {
      const S z = r.score.row(t).sum();
      for (std::int64_t e = 0; e < c->n_routed_experts; ++e) total += balance_fraction(r, t, e) * r.score(t, e) / z;
    }
    return total / static_cast<S>(r.sequence_length);
  }

  // dx of the router input, given d loss / d(weight of expert e for token t) in `dweight` [T, E]
  // and the balance loss's α (0: off); the gate's gradient is added.
  Mat<S> backward(const Mat<S>& x, const Routing<S>& r, const Mat<S>& dweight, S aux_alpha) const {
    const std::int64_t T = x.rows(), E = c->n_routed_experts;
    const S rsf = static_cast<S>(c->routed_scaling_factor);
    // w_j = rsf · s_j · n with n = 1 / (Σ_chosen s + 1e-20): ds_i = rsf · n · (dw_i − n · Σ_j dw_j s_j).
    Mat<S> dlogits = Mat<S>::Zero(T, E);
    for (std::int64_t t = 0; t < T; ++t) {
      const S n = r.norm[static_cast<std::size_t>(t)];
      S mixed = 0;
      if (c->norm_topk_prob)
        for (const std::int64_t e : r.top[t]) mixed += dweight(t, e) * r.score(t, e);
      for (const std::int64_t e : r.top[t]) {
        const S ds = rsf * n * (dweight(t, e) - n * mixed);
        dlogits(t, e) = ds * r.score(t, e) * (S(1) - r.score(t, e));
      }
    }
    // The balance loss reaches every expert's score: with s' = s / Z,
    // d(α·L_Bal)/ds_{t,i} = α/(T·Z_t) · (f_i − Σ_j f_j·s'_{t,j}), T the sequence's length.
    if (aux_alpha > S(0)) {
      for (std::int64_t t = 0; t < T; ++t) {
        const S z = r.score.row(t).sum();
        S mean_f = 0;
        for (std::int64_t e = 0; e < E; ++e) mean_f += balance_fraction(r, t, e) * r.score(t, e) / z;
        for (std::int64_t e = 0; e < E; ++e) {
          const S ds = aux_alpha / (static_cast<S>(r.sequence_length) * z) * (balance_fraction(r, t, e) - mean_f);
          dlogits(t, e) += ds * r.score(t, e) * (S(1) - r.score(t, e));
        }
      }
    }
    return linear_backward(x, gate, dlogits);
  }
};

}  // namespace moonlight::layers
