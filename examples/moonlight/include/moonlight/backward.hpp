// moonlight/backward.hpp: the training forward and backward pass: mean next-token cross-entropy
// of the Moonlight model and its gradient with respect to every weight.
//
// `loss_and_gradients` runs the forward pass of model.hpp (decompressed attention from position
// 0, causal), keeps each block's activations, and back-propagates into a gradient buffer laid out
// like `Weights::data()`, so that `weights.parameter_table(grads)` feeds muon::Optimizer directly.
// Gradients are *added* to the buffer (gradient accumulation over micro-batches: zero it before
// the first one and scale the loss as you average). The MoE router is differentiated through the
// selected experts' normalised sigmoid weights × routed_scaling_factor into the router logits; the
// top-k selection itself and e_score_correction_bias get no gradient (docs/moonlight-architecture.md §6: the bias is
// moved by the load-balancing rule instead), as in transformers' DeepseekV3. DeepSeek-V3's optional
// sequence-wise balance loss (AuxLoss) adds its gradient through every expert's router score.
//
// The code is templated on the scalar: float for training, double for the finite-difference checks
// of test_backward.cpp. The linear layers' fp32 products go to muon/cpu/blas.hpp, the rest to Eigen.
//
//   std::vector<float> grads(model.weights().data().size(), 0.0f);
//   float loss = moonlight::loss_and_gradients(model, inputs, targets, grads);
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "moonlight/balancing.hpp"
#include "moonlight/config.hpp"
#include "moonlight/model.hpp"
#include "moonlight/weights.hpp"
#include "muon/cpu/blas.hpp"
#include "muon/error.hpp"

namespace moonlight {

namespace train {

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using Vec = Eigen::Matrix<S, 1, Eigen::Dynamic>;

// A weight tensor's value and its gradient slot, as [rows, cols] row-major maps (vectors: 1 row).
template <class S>
struct Tensor {
  const S* value = nullptr;
  S* grad = nullptr;
  std::int64_t rows = 0, cols = 0;
  [[nodiscard]] Eigen::Map<const Mat<S>> w() const { return {value, rows, cols}; }
  [[nodiscard]] Eigen::Map<Mat<S>> g() const { return {grad, rows, cols}; }
};

// y = x·Wᵀ; backward: dx = dy·W, dW += dyᵀ·x. These products are most of a training step: in
// fp32 they go to muon/cpu/blas.hpp, that is to OpenBLAS where muon has it, whose kernels are
// chosen for the CPU at run time (the library itself is compiled for the baseline ISA, where
// Eigen's products were 1.6× slower than PyTorch's step); fp64, for the finite-difference checks,
// stays in Eigen.
template <class S>
Mat<S> linear(const Mat<S>& x, const Tensor<S>& W) {
  if constexpr (std::is_same_v<S, float>) {
    Mat<S> y(x.rows(), W.rows);
    muon::cpu::gemm(muon::Transpose::no, muon::Transpose::yes, x.rows(), W.rows, x.cols(), 1.0f, x.data(), x.cols(),
                    W.value, W.cols, 0.0f, y.data(), W.rows);
    return y;
  } else {
    return x * W.w().transpose();
  }
}
template <class S>
Mat<S> linear_backward(const Mat<S>& x, const Tensor<S>& W, const Mat<S>& dy) {
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

// RMSNorm over rows: y = w ⊙ x̂ with x̂ = x / sqrt(mean(x²) + eps). Keeps x̂ and 1/rms.
template <class S>
struct RmsNorm {
  Tensor<S> weight;
  double eps = 0.0;
  Mat<S> xhat;
  std::vector<S> inv;

  Mat<S> forward(const Mat<S>& x) {
    xhat.resize(x.rows(), x.cols());
    inv.resize(static_cast<std::size_t>(x.rows()));
    Mat<S> y(x.rows(), x.cols());
    const auto w = weight.w();
    for (std::int64_t t = 0; t < x.rows(); ++t) {
      const double mean_sq = static_cast<double>(x.row(t).squaredNorm()) / static_cast<double>(x.cols());
      inv[t] = static_cast<S>(1.0 / std::sqrt(mean_sq + eps));
      xhat.row(t) = x.row(t) * inv[t];
      y.row(t) = w.cwiseProduct(xhat.row(t));
    }
    return y;
  }
  // dx = inv · (dx̂ − x̂ · mean(dx̂ ⊙ x̂)), dx̂ = dy ⊙ w; dw += Σ_t dy ⊙ x̂.
  Mat<S> backward(const Mat<S>& dy) {
    const auto w = weight.w();
    weight.g() += dy.cwiseProduct(xhat).colwise().sum();
    Mat<S> dx(dy.rows(), dy.cols());
    for (std::int64_t t = 0; t < dy.rows(); ++t) {
      const Vec<S> dxhat = dy.row(t).cwiseProduct(w);
      const S mean = dxhat.dot(xhat.row(t)) / static_cast<S>(dy.cols());
      dx.row(t) = inv[t] * (dxhat - mean * xhat.row(t));
    }
    return dx;
  }
};

template <class S>
S sigmoid(S z) {
  return S(1) / (S(1) + std::exp(-z));
}

// down(silu(x·gateᵀ) ⊙ x·upᵀ).
template <class S>
struct SwiGlu {
  Tensor<S> gate, up, down;
  Mat<S> x, g, u, a;

  Mat<S> forward(const Mat<S>& input) {
    x = input;
    g = linear(x, gate);
    u = linear(x, up);
    a = g.unaryExpr([](S z) { return z * sigmoid(z); }).cwiseProduct(u);
    return linear(a, down);
  }
  Mat<S> backward(const Mat<S>& dy) {
    const Mat<S> da = linear_backward(a, down, dy);
    Mat<S> dg(g.rows(), g.cols()), du(u.rows(), u.cols());
    for (std::int64_t i = 0; i < g.size(); ++i) {
      const S z = g.data()[i], s = sigmoid(z);
      du.data()[i] = da.data()[i] * z * s;
      dg.data()[i] = da.data()[i] * u.data()[i] * s * (S(1) + z * (S(1) - s));  // silu'(z)
    }
    Mat<S> dx = linear_backward(x, gate, dg);
    dx += linear_backward(x, up, du);
    return dx;
  }
};

// The model's weights (values and gradient slots) by role, for one scalar type.
template <class S>
struct Net {
  struct Layer {
    RmsNorm<S> input_norm, post_norm, q_a_norm, kv_a_norm;
    Tensor<S> q_proj, q_a_proj, q_b_proj, kv_a_proj, kv_b_proj, o_proj;
    bool moe = false;
    SwiGlu<S> dense, shared;
    Tensor<S> router, router_bias;  // router_bias: selection only, its gradient slot stays 0
    std::vector<SwiGlu<S>> experts;
  };
  Tensor<S> embed, lm_head;
  RmsNorm<S> final_norm;
  std::vector<Layer> layers;
  std::vector<float> inv_freq;  // RoPE, in fp32 as model.hpp and transformers compute it
};

template <class S>
Net<S> bind(const Config& c, const Weights& layout, std::span<const S> values, std::span<S> grads) {
  if (values.size() != layout.data().size() || grads.size() != layout.data().size()) {
    throw muon::ShapeMismatch("values have " + std::to_string(values.size()) + " and gradients " +
                              std::to_string(grads.size()) + " entries; the weights' layout needs " +
                              std::to_string(layout.data().size()));
  }
  const auto t = [&](const std::string& name) {
    const TensorSpec& s = layout.spec(name);
    const std::int64_t rows = s.shape.size() == 2 ? s.shape[0] : 1;
    return Tensor<S>{values.data() + s.offset, grads.data() + s.offset, rows, s.shape.back()};
  };
  const auto mlp = [&](const std::string& p) {
    SwiGlu<S> m;
    m.gate = t(p + "gate_proj.weight");
    m.up = t(p + "up_proj.weight");
    m.down = t(p + "down_proj.weight");
    return m;
  };
  Net<S> net;
  net.embed = t("model.embed_tokens.weight");
  net.lm_head = c.tie_word_embeddings ? net.embed : t("lm_head.weight");
  net.final_norm = {t("model.norm.weight"), c.rms_norm_eps, {}, {}};
  net.layers.resize(static_cast<std::size_t>(c.num_hidden_layers));
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto& L = net.layers[static_cast<std::size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    L.input_norm = {t(p + "input_layernorm.weight"), c.rms_norm_eps, {}, {}};
    L.post_norm = {t(p + "post_attention_layernorm.weight"), c.rms_norm_eps, {}, {}};
    if (c.q_lora_rank) {
      L.q_a_proj = t(p + "self_attn.q_a_proj.weight");
      L.q_a_norm = {t(p + "self_attn.q_a_layernorm.weight"), Config::latent_norm_eps, {}, {}};
      L.q_b_proj = t(p + "self_attn.q_b_proj.weight");
    } else {
      L.q_proj = t(p + "self_attn.q_proj.weight");
    }
    L.kv_a_proj = t(p + "self_attn.kv_a_proj_with_mqa.weight");
    L.kv_a_norm = {t(p + "self_attn.kv_a_layernorm.weight"), Config::latent_norm_eps, {}, {}};
    L.kv_b_proj = t(p + "self_attn.kv_b_proj.weight");
    L.o_proj = t(p + "self_attn.o_proj.weight");
    L.moe = c.is_moe_layer(l);
    if (L.moe) {
      L.router = t(p + "mlp.gate.weight");
      L.router_bias = t(p + "mlp.gate.e_score_correction_bias");
      for (std::int64_t e = 0; e < c.n_routed_experts; ++e) {
        L.experts.push_back(mlp(p + "mlp.experts." + std::to_string(e) + "."));
      }
      if (c.n_shared_experts > 0) L.shared = mlp(p + "mlp.shared_experts.");
    } else {
      L.dense = mlp(p + "mlp.");
    }
  }
  const std::int64_t d = c.qk_rope_head_dim;
  for (std::int64_t i = 0; i < d; i += 2) {
    const float exponent = static_cast<float>(i) / static_cast<float>(d);
    net.inv_freq.push_back(1.0f / std::pow(static_cast<float>(c.rope_theta), exponent));
  }
  return net;
}

// Interleaved RoPE of one vector at `position` (model.hpp's Model::rope); `inverse` rotates back,
// which is also the backward pass of the rotation (its transpose).
template <class S>
void rope(const std::vector<float>& inv_freq, S* v, std::int64_t position, bool inverse) {
  for (std::size_t i = 0; i < inv_freq.size(); ++i) {
    const float angle = static_cast<float>(position) * inv_freq[i];
    const S cos = static_cast<S>(std::cos(angle)), sin = static_cast<S>(inverse ? -std::sin(angle) : std::sin(angle));
    const S x0 = v[2 * i], x1 = v[2 * i + 1];
    v[2 * i] = x0 * cos - x1 * sin;
    v[2 * i + 1] = x0 * sin + x1 * cos;
  }
}

// Multi-head latent attention, decompressed, causal over positions 0..T-1.
template <class S>
struct Attention {
  const Config* c = nullptr;
  typename Net<S>::Layer* L = nullptr;
  const std::vector<float>* inv_freq = nullptr;
  Mat<S> x, qa_n, q, kv_a, latent, kv, out;
  std::vector<Mat<S>> probs;  // per head [T, T]

  Mat<S> forward(const Mat<S>& input) {
    const std::int64_t T = input.rows(), H = c->num_attention_heads, r = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    const std::int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = c->qk_head_dim();
    const S scale = static_cast<S>(1.0 / std::sqrt(static_cast<double>(dqk)));
    x = input;
    if (c->q_lora_rank) {
      qa_n = L->q_a_norm.forward(linear(x, L->q_a_proj));
      q = linear(qa_n, L->q_b_proj);
    } else {
      q = linear(x, L->q_proj);
    }
    kv_a = linear(x, L->kv_a_proj);
    latent = L->kv_a_norm.forward(kv_a.leftCols(r));
    for (std::int64_t t = 0; t < T; ++t) {
      rope(*inv_freq, kv_a.data() + t * (r + dr) + r, t, false);  // kv_a's rope part now holds k_pe
      for (std::int64_t h = 0; h < H; ++h) rope(*inv_freq, q.data() + t * H * dqk + h * dqk + dn, t, false);
    }
    kv = linear(latent, L->kv_b_proj);
    out.resize(T, H * dv);
    probs.assign(static_cast<std::size_t>(H), Mat<S>());
    const auto k_pe = kv_a.rightCols(dr);
    for (std::int64_t h = 0; h < H; ++h) {
      Mat<S> scores = q.block(0, h * dqk, T, dn) * kv.block(0, h * (dn + dv), T, dn).transpose();
      scores.noalias() += q.block(0, h * dqk + dn, T, dr) * k_pe.transpose();
      scores *= scale;
      for (std::int64_t t = 0; t < T; ++t) {
        const S m = scores.row(t).head(t + 1).maxCoeff();
        S sum = 0;
        for (std::int64_t u = 0; u <= t; ++u) sum += scores(t, u) = std::exp(scores(t, u) - m);
        scores.row(t).head(t + 1) /= sum;
        scores.row(t).tail(T - t - 1).setZero();
      }
      out.block(0, h * dv, T, dv).noalias() = scores * kv.block(0, h * (dn + dv) + dn, T, dv);
      probs[static_cast<std::size_t>(h)] = std::move(scores);
    }
    return linear(out, L->o_proj);
  }

  Mat<S> backward(const Mat<S>& dy) {
    const std::int64_t T = x.rows(), H = c->num_attention_heads, r = c->kv_lora_rank, dr = c->qk_rope_head_dim;
    const std::int64_t dn = c->qk_nope_head_dim, dv = c->v_head_dim, dqk = c->qk_head_dim();
    const S scale = static_cast<S>(1.0 / std::sqrt(static_cast<double>(dqk)));
    const Mat<S> dout = linear_backward(out, L->o_proj, dy);
    Mat<S> dq(T, H * dqk), dkv(T, H * (dn + dv)), dk_pe = Mat<S>::Zero(T, dr);
    const auto k_pe = kv_a.rightCols(dr);
    for (std::int64_t h = 0; h < H; ++h) {
      const Mat<S>& P = probs[static_cast<std::size_t>(h)];
      const auto dout_h = dout.block(0, h * dv, T, dv);
      const Mat<S> dP = dout_h * kv.block(0, h * (dn + dv) + dn, T, dv).transpose();
      dkv.block(0, h * (dn + dv) + dn, T, dv).noalias() = P.transpose() * dout_h;
      // Softmax backward: dS = P ⊙ (dP − rowsum(dP ⊙ P)); masked entries have P = 0.
      Mat<S> dS = P.cwiseProduct(dP);
      const Eigen::Matrix<S, Eigen::Dynamic, 1> row_dot = dS.rowwise().sum();
      dS -= P.cwiseProduct(row_dot.replicate(1, T));
      dS *= scale;
      dq.block(0, h * dqk, T, dn).noalias() = dS * kv.block(0, h * (dn + dv), T, dn);
      dq.block(0, h * dqk + dn, T, dr).noalias() = dS * k_pe;
      dkv.block(0, h * (dn + dv), T, dn).noalias() = dS.transpose() * q.block(0, h * dqk, T, dn);
      dk_pe.noalias() += dS.transpose() * q.block(0, h * dqk + dn, T, dr);
    }
    for (std::int64_t t = 0; t < T; ++t) {
      rope(*inv_freq, dk_pe.data() + t * dr, t, true);
      for (std::int64_t h = 0; h < H; ++h) rope(*inv_freq, dq.data() + t * H * dqk + h * dqk + dn, t, true);
    }
    Mat<S> dkv_a(T, r + dr);
    dkv_a.leftCols(r) = L->kv_a_norm.backward(linear_backward(latent, L->kv_b_proj, dkv));
    dkv_a.rightCols(dr) = dk_pe;
    Mat<S> dx = linear_backward(x, L->kv_a_proj, dkv_a);
    if (c->q_lora_rank) {
      const Mat<S> dqa = L->q_a_norm.backward(linear_backward(qa_n, L->q_b_proj, dq));
      dx += linear_backward(x, L->q_a_proj, dqa);
    } else {
      dx += linear_backward(x, L->q_proj, dq);
    }
    return dx;
  }
};

// The sigmoid-routed MoE block plus shared experts (model.hpp's Model::moe).
template <class S>
struct Moe {
  const Config* c = nullptr;
  typename Net<S>::Layer* L = nullptr;
  Mat<S> x, score;                            // score: sigmoid(router logits) [T, E]
  std::vector<std::vector<std::int64_t>> top;  // per token: the chosen experts
  std::vector<S> norm;                         // per token: 1 / (Σ chosen scores + 1e-20), or 1
  std::vector<std::vector<std::int64_t>> tokens_of;  // per expert
  std::vector<Mat<S>> expert_out;                    // per expert, unweighted
  S aux_alpha = 0;   // α of the sequence-wise balance loss (0: off)
  S aux_value = 0;   // α·L_Bal of this layer, set by forward

  S weight(std::int64_t t, std::int64_t e) const {
    return score(t, e) * norm[static_cast<std::size_t>(t)] * static_cast<S>(c->routed_scaling_factor);
  }

  Mat<S> forward(const Mat<S>& input) {
    const std::int64_t T = input.rows(), E = c->n_routed_experts, k = c->num_experts_per_tok;
    const std::int64_t per_group = E / c->n_group;
    x = input;
    score = linear(x, L->router).unaryExpr([](S z) { return sigmoid(z); });
    top.assign(static_cast<std::size_t>(T), {});
    norm.assign(static_cast<std::size_t>(T), S(1));
    tokens_of.assign(static_cast<std::size_t>(E), {});
    std::vector<S> choice(static_cast<std::size_t>(E)), group_score(static_cast<std::size_t>(c->n_group));
    std::vector<std::int64_t> order(choice.size()), groups(group_score.size());
    const auto bias = L->router_bias.w();
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t e = 0; e < E; ++e) choice[e] = score(t, e) + bias(0, e);
      if (c->n_group > 1) {  // as model.hpp: keep topk_group groups by their top-2 sum, zero the rest
        for (std::int64_t g = 0; g < c->n_group; ++g) {
          std::vector<S> members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
          std::partial_sort(members.begin(), members.begin() + 2, members.end(), std::greater<>());
          group_score[g] = members[0] + members[1];
        }
        std::iota(groups.begin(), groups.end(), 0);
        const auto by_score = [&](std::int64_t a, std::int64_t b) {
          return group_score[a] > group_score[b] || (group_score[a] == group_score[b] && a < b);
        };
        std::partial_sort(groups.begin(), groups.begin() + c->topk_group, groups.end(), by_score);
        std::vector<bool> keep(group_score.size(), false);
        for (std::int64_t i = 0; i < c->topk_group; ++i) keep[groups[i]] = true;
        for (std::int64_t e = 0; e < E; ++e) {
          if (!keep[e / per_group]) choice[e] = S(0);
        }
      }
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](std::int64_t a, std::int64_t b) {
        return choice[a] > choice[b] || (choice[a] == choice[b] && a < b);
      });
      S sum = 0;
      for (std::int64_t j = 0; j < k; ++j) {
        top[t].push_back(order[j]);
        tokens_of[order[j]].push_back(t);
        sum += score(t, order[j]);
      }
      if (c->norm_topk_prob) norm[t] = S(1) / (sum + static_cast<S>(1e-20));
    }
    if (aux_alpha > S(0)) aux_value = aux_alpha * balance_loss();
    Mat<S> y = Mat<S>::Zero(T, c->hidden_size);
    expert_out.assign(static_cast<std::size_t>(E), Mat<S>());
    for (std::int64_t e = 0; e < E; ++e) {
      const auto& list = tokens_of[e];
      if (list.empty()) continue;
      Mat<S> xe(static_cast<std::int64_t>(list.size()), c->hidden_size);
      for (std::size_t i = 0; i < list.size(); ++i) xe.row(static_cast<std::int64_t>(i)) = x.row(list[i]);
      expert_out[e] = L->experts[e].forward(xe);
      for (std::size_t i = 0; i < list.size(); ++i) {
        y.row(list[i]) += weight(list[i], e) * expert_out[e].row(static_cast<std::int64_t>(i));
      }
    }
    if (c->n_shared_experts > 0) y += L->shared.forward(x);
    return y;
  }

  // f_i = N_r/(K_r·T)·(tokens routed to i): a constant, the selection has no gradient.
  S balance_fraction(std::int64_t e) const {
    const std::int64_t T = x.rows();
    return static_cast<S>(c->n_routed_experts) * static_cast<S>(tokens_of[e].size()) /
           (static_cast<S>(c->num_experts_per_tok) * static_cast<S>(T));
  }

  // L_Bal = Σ_i f_i·P_i with P_i = mean_t s_{t,i} / Σ_j s_{t,j} over all experts (docs/moonlight-architecture.md §6).
  S balance_loss() const {
    const std::int64_t T = x.rows();
    S total = 0;
    for (std::int64_t t = 0; t < T; ++t) {
      const S z = score.row(t).sum();
      for (std::int64_t e = 0; e < c->n_routed_experts; ++e) total += balance_fraction(e) * score(t, e) / z;
    }
    return total / static_cast<S>(T);
  }

  Mat<S> backward(const Mat<S>& dy) {
    const std::int64_t T = x.rows(), E = c->n_routed_experts;
    const S rsf = static_cast<S>(c->routed_scaling_factor);
    Mat<S> dx = c->n_shared_experts > 0 ? L->shared.backward(dy) : Mat<S>::Zero(T, c->hidden_size);
    Mat<S> dweight = Mat<S>::Zero(T, E);  // d loss / d (routing weight of expert e for token t)
    for (std::int64_t e = 0; e < E; ++e) {
      const auto& list = tokens_of[e];
      if (list.empty()) continue;
      Mat<S> dye(static_cast<std::int64_t>(list.size()), c->hidden_size);
      for (std::size_t i = 0; i < list.size(); ++i) {
        const auto row = static_cast<std::int64_t>(i);
        dweight(list[i], e) = dy.row(list[i]).dot(expert_out[e].row(row));
        dye.row(row) = weight(list[i], e) * dy.row(list[i]);
      }
      const Mat<S> dxe = L->experts[e].backward(dye);
      for (std::size_t i = 0; i < list.size(); ++i) dx.row(list[i]) += dxe.row(static_cast<std::int64_t>(i));
    }
    // w_j = rsf · s_j · n with n = 1 / (Σ_chosen s + 1e-20): ds_i = rsf · n · (dw_i − n · Σ_j dw_j s_j).
    Mat<S> dlogits = Mat<S>::Zero(T, E);
    for (std::int64_t t = 0; t < T; ++t) {
      const S n = norm[static_cast<std::size_t>(t)];
      S mixed = 0;
      if (c->norm_topk_prob) {
        for (const std::int64_t e : top[t]) mixed += dweight(t, e) * score(t, e);
      }
      for (const std::int64_t e : top[t]) {
        const S ds = rsf * n * (dweight(t, e) - n * mixed);
        dlogits(t, e) = ds * score(t, e) * (S(1) - score(t, e));
      }
    }
    // The balance loss reaches every expert's score: with s' = s / Z,
    // d(α·L_Bal)/ds_{t,i} = α/(T·Z_t) · (f_i − Σ_j f_j·s'_{t,j}).
    if (aux_alpha > S(0)) {
      for (std::int64_t t = 0; t < T; ++t) {
        const S z = score.row(t).sum();
        S mean_f = 0;
        for (std::int64_t e = 0; e < E; ++e) mean_f += balance_fraction(e) * score(t, e) / z;
        for (std::int64_t e = 0; e < E; ++e) {
          const S ds = aux_alpha / (static_cast<S>(T) * z) * (balance_fraction(e) - mean_f);
          dlogits(t, e) += ds * score(t, e) * (S(1) - score(t, e));
        }
      }
    }
    dx += linear_backward(x, L->router, dlogits);
    return dx;
  }
};

}  // namespace train

// The optional sequence-wise balance loss of DeepSeek-V3 (docs/moonlight-architecture.md §6): α·Σ_layers L_Bal is
// added to the objective (its value also to *value when given). α = 0 leaves the pass unchanged.
struct AuxLoss {
  double alpha = 0.0;
  double* value = nullptr;
};

// Mean cross-entropy of the model's next-token logits for `inputs` (positions 0..T-1) against
// `targets` (T ids: targets[t] is the token after inputs[t]), and d loss / d weights added into
// `grads`. `layout` gives each tensor's offset; `values` and `grads` are buffers of its size.
// With `load`, the tokens routed to each expert are added to load->tokens[layer][expert] (sized
// here on first use; dense layers keep an empty row), for the balancing rule of balancing.hpp.
// With aux.alpha > 0 the returned objective and the gradients include the balance loss.
template <class S>
S loss_and_gradients(const Config& c, const Weights& layout, std::span<const S> values,
                     std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets, std::span<S> grads,
                     ExpertLoad* load = nullptr, const AuxLoss& aux = {}) {
  if (!(aux.alpha >= 0.0) || !std::isfinite(aux.alpha)) {
    throw muon::InvalidArgument("AuxLoss.alpha must be finite and >= 0, got " + std::to_string(aux.alpha));
  }
  using train::Mat;
  const auto T = static_cast<std::int64_t>(inputs.size());
  if (T == 0) throw muon::InvalidArgument("loss_and_gradients needs at least one input token");
  if (targets.size() != inputs.size()) {
    throw muon::ShapeMismatch("targets has " + std::to_string(targets.size()) + " ids; inputs has " +
                              std::to_string(T) + " (one target per input)");
  }
  for (const auto ids : {inputs, targets}) {
    for (std::size_t t = 0; t < ids.size(); ++t) {
      if (ids[t] < 0 || ids[t] >= c.vocab_size) {
        throw muon::InvalidArgument(std::string(ids.data() == inputs.data() ? "input" : "target") + " token id " +
                                    std::to_string(ids[t]) + " at index " + std::to_string(t) +
                                    " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
      }
    }
  }
  train::Net<S> net = train::bind<S>(c, layout, values, grads);
  const auto embed = net.embed.w();
  Mat<S> h(T, c.hidden_size);
  for (std::int64_t t = 0; t < T; ++t) h.row(t) = embed.row(inputs[static_cast<std::size_t>(t)]);

  std::vector<train::Attention<S>> attention(net.layers.size());
  std::vector<train::Moe<S>> moe(net.layers.size());
  for (std::size_t l = 0; l < net.layers.size(); ++l) {
    auto& L = net.layers[l];
    attention[l].c = &c;
    attention[l].L = &L;
    attention[l].inv_freq = &net.inv_freq;
    h += attention[l].forward(L.input_norm.forward(h));
    const Mat<S> hn = L.post_norm.forward(h);
    if (L.moe) {
      moe[l].c = &c;
      moe[l].L = &L;
      moe[l].aux_alpha = static_cast<S>(aux.alpha);
      h += moe[l].forward(hn);
      if (load) {
        load->tokens.resize(net.layers.size());
        auto& row = load->tokens[l];
        row.resize(static_cast<std::size_t>(c.n_routed_experts), 0);
        for (std::size_t e = 0; e < row.size(); ++e) row[e] += static_cast<std::int64_t>(moe[l].tokens_of[e].size());
      }
    } else {
      h += L.dense.forward(hn);
    }
  }
  const Mat<S> hn = net.final_norm.forward(h);
  Mat<S> logits = train::linear(hn, net.lm_head);

  // Cross-entropy; its gradient (softmax − one-hot) / T overwrites the logits.
  S loss = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    auto row = logits.row(t);
    const S m = row.maxCoeff();
    row = (row.array() - m).exp();
    const S sum = row.sum();
    const std::int32_t target = targets[static_cast<std::size_t>(t)];
    loss -= std::log(row(target) / sum);
    row /= sum * static_cast<S>(T);
    row(target) -= S(1) / static_cast<S>(T);
  }
  loss /= static_cast<S>(T);
  S aux_total = 0;
  for (const train::Moe<S>& m : moe) aux_total += m.aux_value;
  if (aux.value != nullptr) *aux.value = static_cast<double>(aux_total);

  Mat<S> dh = net.final_norm.backward(train::linear_backward(hn, net.lm_head, logits));
  for (std::size_t l = net.layers.size(); l-- > 0;) {
    auto& L = net.layers[l];
    const Mat<S> dhn = L.moe ? moe[l].backward(dh) : L.dense.backward(dh);
    dh += L.post_norm.backward(dhn);
    dh += L.input_norm.backward(attention[l].backward(dh));
  }
  auto dembed = net.embed.g();
  for (std::int64_t t = 0; t < T; ++t) dembed.row(inputs[static_cast<std::size_t>(t)]) += dh.row(t);
  return loss + aux_total;
}

// The fp32 training entry point on a loaded model's weights.
inline float loss_and_gradients(const Model& model, std::span<const std::int32_t> inputs,
                                std::span<const std::int32_t> targets, std::span<float> grads,
                                ExpertLoad* load = nullptr, const AuxLoss& aux = {}) {
  return loss_and_gradients<float>(model.config(), model.weights(), model.weights().data(), inputs, targets, grads,
                                   load, aux);
}

}  // namespace moonlight
