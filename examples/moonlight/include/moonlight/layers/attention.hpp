// moonlight/layers/attention.hpp: multi-head latent attention (MLA) with RoPE
// (docs/moonlight-architecture.md §3.3, §8), forward and backward.
//
// Per token: q (q_proj, or q_b_proj(RMSNorm(q_a_proj x)) with q LoRA), split per head into q_nope
// and q_pe; the latent row [c ; k_pe] = kv_a_proj x with c RMS-normalised and the shared rope key
// k_pe rotated; per-head keys and values are kv_b_proj c. The forward runs over the tokens of the
// pass at positions 0… (training, evaluation) or, with a KV cache, at positions cache.length()…
// after appending their latent rows (inference). Two equivalent ways to attend:
// `decompressed` up-projects every key's latent to per-head keys and values (cheap for many
// queries: prefill, training; the only way with a tape); `absorbed` folds kv_b_proj into the query
// and the output and attends over the latents directly (cheap for one query: decode).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "moonlight/config.hpp"
#include "moonlight/kv_cache.hpp"
#include "moonlight/layers/kernels.hpp"
#include "moonlight/layers/linear.hpp"
#include "moonlight/layers/rms_norm.hpp"
#include "moonlight/layers/rope.hpp"
#include "muon/error.hpp"

namespace moonlight {

enum class AttentionPath { automatic, decompressed, absorbed };

namespace layers {

// In-place softmax of the first `n` entries of a row; entries from n on (the causal mask's future
// positions) become 0. fp32 runs in layers/kernels.hpp's loops.
template <class S>
void softmax_prefix(S* row, std::int64_t n, std::int64_t width) {
  if constexpr (std::is_same_v<S, float>) {
    const LayerKernels& k = layer_kernels();
    const float sum = k.exp_sum(row, n, k.max(row, n));
    muon::cpu::elementwise_kernels(muon::detected_cpu_isa()).scale(row, n, 1.0f / sum);
  } else {
    const S m = *std::max_element(row, row + n);
    S sum = 0;
    for (std::int64_t u = 0; u < n; ++u) sum += row[u] = std::exp(row[u] - m);
    for (std::int64_t u = 0; u < n; ++u) row[u] /= sum;
  }
  std::fill(row + n, row + width, S(0));
}

// The largest logit of `scores` [T, keys] that the causal mask lets through: row t's first
// pos0 + t + 1 entries.
template <class S>
S max_causal_logit(const Mat<S>& scores, std::int64_t pos0) {
  S m = -std::numeric_limits<S>::infinity();
  for (std::int64_t t = 0; t < scores.rows(); ++t) m = std::max(m, scores.row(t).head(pos0 + t + 1).maxCoeff());
  return m;
}

template <class S>
struct Attention {
  const Config* c = nullptr;
  const Rope* rope = nullptr;
  Weight<S> q_proj;                  // without q LoRA
  Weight<S> q_a_proj, q_b_proj;      // with q LoRA
  RmsNorm<S> q_a_norm;               // with q LoRA
  Weight<S> kv_a_proj, kv_b_proj, o_proj;
  RmsNorm<S> kv_a_norm;

  struct Tape {
    Mat<S> x, qa, q, kv_a, latent, kv, out;  // qa: the normalised q LoRA latent; kv_a: k_pe rotated
    typename RmsNorm<S>::Tape qa_norm, kv_norm;
    std::vector<Mat<S>> probs;  // per sequence and head [T, T]: their count gives the sequences
    std::vector<S> max_logit;   // per head: the largest logit that reached the softmax (QK-clip)
  };

  // The attention output (after o_proj) for `x` [rows, hidden]. With `cache` (fp32 only), the
  // tokens sit at positions cache->length()… and their latent rows are appended to layer `layer`
  // (the caller commits); else x stacks `sequences` sequences of equal length T, each at positions
  // 0…T-1 and attending within itself (training batches a thread's sequences so that every
  // product has more rows). A tape needs the decompressed path and no cache.
  Mat<S> forward(const Mat<S>& x, Tape* tape = nullptr, KvCache* cache = nullptr, std::int64_t layer = 0,
                 AttentionPath path = AttentionPath::automatic, std::int64_t sequences = 1) const {
    const std::int64_t rows_in = x.rows(), T = rows_in / sequences, H = c->num_attention_heads;
    const std::int64_t r = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    const std::int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = c->qk_head_dim();
    const std::int64_t pos0 = cache ? cache->length() : 0, keys = pos0 + T;
    if (path == AttentionPath::automatic) path = T > 1 || tape ? AttentionPath::decompressed : AttentionPath::absorbed;
    if (tape && (cache || path != AttentionPath::decompressed))
      throw muon::InvalidArgument("Attention::forward: a training tape needs the decompressed path and no KV cache");
    if (sequences < 1 || T * sequences != rows_in || (sequences > 1 && (cache || path != AttentionPath::decompressed)))
      throw muon::InvalidArgument("Attention::forward: " + std::to_string(rows_in) + " rows are not " +
                                  std::to_string(sequences) + " equal sequences on the decompressed path without a cache");

    Mat<S> qa;
    Mat<S> q = c->q_lora_rank ? linear(qa = q_a_norm.forward(linear(x, q_a_proj), tape ? &tape->qa_norm : nullptr), q_b_proj)
                              : linear(x, q_proj);
    Mat<S> kv_a = linear(x, kv_a_proj);  // [T, r + dr]
    Mat<S> latent = kv_a_norm.forward(kv_a.leftCols(r), tape ? &tape->kv_norm : nullptr);
    for (std::int64_t t = 0; t < rows_in; ++t) {
      rope->rotate(kv_a.data() + t * (r + dr) + r, pos0 + t % T);  // kv_a's rope part now holds k_pe
      for (std::int64_t h = 0; h < H; ++h) rope->rotate(q.data() + t * H * dqk + h * dqk + dn, pos0 + t % T);
    }

    // Every key's latent row [c ; k_pe]: the cache's (this pass's rows appended), or this pass's.
    const S* rows = nullptr;
    std::int64_t stride = r + dr;
    Mat<S> own_rows;
    if (cache) {
      if constexpr (std::is_same_v<S, float>) {
        Mat<S> appended(T, r + dr);
        appended.leftCols(r) = latent;
        appended.rightCols(dr) = kv_a.rightCols(dr);
        cache->append(layer, {appended.data(), static_cast<std::size_t>(appended.size())});
        rows = cache->layer(layer).data();
      } else {
        throw muon::InvalidArgument("Attention::forward: the KV cache holds fp32 rows");
      }
    } else {
      own_rows.resize(rows_in, r + dr);
      own_rows.leftCols(r) = latent;
      own_rows.rightCols(dr) = kv_a.rightCols(dr);
      rows = own_rows.data();
    }
    using StridedMap = Eigen::Map<const Mat<S>, 0, Eigen::OuterStride<>>;
    const StridedMap key_latent(rows, cache ? keys : rows_in, r, Eigen::OuterStride<>(stride));
    const StridedMap k_pe(rows + r, cache ? keys : rows_in, dr, Eigen::OuterStride<>(stride));
    const S scale = static_cast<S>(1.0 / std::sqrt(static_cast<double>(dqk)));
    constexpr auto no = muon::Transpose::no, yes = muon::Transpose::yes;

    Mat<S> out(rows_in, H * dv);
    Mat<S> kv;
    std::vector<S> max_logit;  // per sequence and head
    if (tape) {
      tape->probs.assign(static_cast<std::size_t>(sequences * H), Mat<S>());
      max_logit.assign(static_cast<std::size_t>(sequences * H), -std::numeric_limits<S>::infinity());
    }
    if (path == AttentionPath::decompressed) {
      // Per-head keys and values of every key: [keys, H·(dn + dv)].
      kv = cache ? linear(Mat<S>(key_latent), kv_b_proj) : linear(latent, kv_b_proj);
#pragma omp parallel for if (T * keys * H * sequences > (1 << 15))
      for (std::int64_t bh = 0; bh < sequences * H; ++bh) {
        const std::int64_t b = bh / H, h = bh % H, q0 = b * T, k0 = cache ? 0 : b * T;  // first query, key row
        Mat<S> scores(T, keys);
        product(q.block(q0, h * dqk, T, dn), no, kv.block(k0, h * (dn + dv), keys, dn), yes, scores);
        product(q.block(q0, h * dqk + dn, T, dr), no, k_pe.middleRows(k0, keys), yes, scores, S(1));
        scores *= scale;
        if (tape) max_logit[static_cast<std::size_t>(bh)] = max_causal_logit(scores, pos0);
        for (std::int64_t t = 0; t < T; ++t) softmax_prefix(scores.row(t).data(), pos0 + t + 1, keys);
        product(scores, no, kv.block(k0, h * (dn + dv) + dn, keys, dv), no, out.block(q0, h * dv, T, dv));
        if (tape) tape->probs[static_cast<std::size_t>(bh)] = std::move(scores);
      }
    } else {
      // Absorbed: q̃_h = W_UK,hᵀ q_nope,h attends over the latents (one shared "KV head" of width
      // r + dr); the result is up-projected once by W_UV,h. Rows are (head, token) pairs.
      const Eigen::Map<const Mat<S>> kv_b(kv_b_proj.value, H * (dn + dv), r);
      Mat<S> q_latent(H * T, r), q_pe(H * T, dr);
      for (std::int64_t h = 0; h < H; ++h) {
        product(q.block(0, h * dqk, T, dn), no, kv_b.block(h * (dn + dv), 0, dn, r), no, q_latent.block(h * T, 0, T, r));
        q_pe.block(h * T, 0, T, dr) = q.block(0, h * dqk + dn, T, dr);
      }
      Mat<S> scores(H * T, keys);
      product(q_latent, no, key_latent, yes, scores);
      product(q_pe, no, k_pe, yes, scores, S(1));
      scores *= scale;
      for (std::int64_t i = 0; i < H * T; ++i) softmax_prefix(scores.row(i).data(), pos0 + i % T + 1, keys);
      Mat<S> context(H * T, r);
      product(scores, no, key_latent, no, context);
      for (std::int64_t h = 0; h < H; ++h)
        product(context.block(h * T, 0, T, r), no, kv_b.block(h * (dn + dv) + dn, 0, dv, r), yes, out.block(0, h * dv, T, dv));
    }
    Mat<S> y = linear(out, o_proj);
    if (tape) {
      // Per head over the sequences, a max that keeps a NaN (as MaxLogits does).
      tape->max_logit.assign(static_cast<std::size_t>(H), -std::numeric_limits<S>::infinity());
      for (std::size_t i = 0; i < max_logit.size(); ++i) {
        S& m = tape->max_logit[i % static_cast<std::size_t>(H)];
        if (!std::isnan(m) && !(max_logit[i] < m)) m = max_logit[i];
      }
      tape->x = x;
      tape->qa = std::move(qa);
      tape->q = std::move(q);
      tape->kv_a = std::move(kv_a);
      tape->latent = std::move(latent);
      tape->kv = std::move(kv);
      tape->out = std::move(out);
    }
    return y;
  }

  Mat<S> backward(const Tape& tape, const Mat<S>& dy) const {
    const std::int64_t H = c->num_attention_heads, sequences = std::ssize(tape.probs) / H;
    const std::int64_t rows_in = tape.x.rows(), T = rows_in / sequences;
    const std::int64_t r = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    const std::int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = c->qk_head_dim();
    const S scale = static_cast<S>(1.0 / std::sqrt(static_cast<double>(dqk)));
    constexpr auto no = muon::Transpose::no, yes = muon::Transpose::yes;
    const Mat<S> dout = linear_backward(tape.out, o_proj, dy);
    Mat<S> dq(rows_in, H * dqk), dkv(rows_in, H * (dn + dv)), dk_pe = Mat<S>::Zero(rows_in, dr);
    for (std::int64_t bh = 0; bh < sequences * H; ++bh) {
      const std::int64_t b = bh / H, h = bh % H, t0 = b * T;  // the sequence's first row
      const Mat<S>& P = tape.probs[static_cast<std::size_t>(bh)];
      const auto dout_h = dout.block(t0, h * dv, T, dv);
      const auto k_pe = tape.kv_a.block(t0, r, T, dr);
      Mat<S> dP(T, T);
      product(dout_h, no, tape.kv.block(t0, h * (dn + dv) + dn, T, dv), yes, dP);
      product(P, yes, dout_h, no, dkv.block(t0, h * (dn + dv) + dn, T, dv));
      // Softmax backward: dS = P ⊙ (dP − rowsum(dP ⊙ P)); masked entries have P = 0.
      Mat<S> dS = P.cwiseProduct(dP);
      const Eigen::Matrix<S, Eigen::Dynamic, 1> row_dot = dS.rowwise().sum();
      dS -= P.cwiseProduct(row_dot.replicate(1, T));
      dS *= scale;
      product(dS, no, tape.kv.block(t0, h * (dn + dv), T, dn), no, dq.block(t0, h * dqk, T, dn));
      product(dS, no, k_pe, no, dq.block(t0, h * dqk + dn, T, dr));
      product(dS, yes, tape.q.block(t0, h * dqk, T, dn), no, dkv.block(t0, h * (dn + dv), T, dn));
      product(dS, yes, tape.q.block(t0, h * dqk + dn, T, dr), no, dk_pe.middleRows(t0, T), S(1));
    }
    for (std::int64_t t = 0; t < rows_in; ++t) {
      rope->rotate(dk_pe.data() + t * dr, t % T, true);
      for (std::int64_t h = 0; h < H; ++h) rope->rotate(dq.data() + t * H * dqk + h * dqk + dn, t % T, true);
    }
    Mat<S> dkv_a(rows_in, r + dr);
    dkv_a.leftCols(r) = kv_a_norm.backward(tape.kv_norm, linear_backward(tape.latent, kv_b_proj, dkv));
    dkv_a.rightCols(dr) = dk_pe;
    Mat<S> dx = linear_backward(tape.x, kv_a_proj, dkv_a);
    if (c->q_lora_rank) {
      const Mat<S> dqa = q_a_norm.backward(tape.qa_norm, linear_backward(tape.qa, q_b_proj, dq));
      dx += linear_backward(tape.x, q_a_proj, dqa);
    } else {
      dx += linear_backward(tape.x, q_proj, dq);
    }
    return dx;
  }
};

}  // namespace layers
}  // namespace moonlight
