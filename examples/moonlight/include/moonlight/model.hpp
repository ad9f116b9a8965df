// moonlight/model.hpp: the DeepseekV3 / Moonlight forward pass in fp32 on the CPU.
//
// Pre-norm decoder (docs/moonlight-architecture.md §3): embed → per layer h += MLA(RMSNorm(h)), h += FFN(RMSNorm(h))
// with a dense SwiGLU for the first `first_k_dense_replace` layers and the sigmoid-routed MoE
// (plus shared experts) after → RMSNorm → lm_head. Matrix products go through muon/cpu/blas.hpp:
// OpenBLAS (threaded with OpenMP) when muon was built with it, else Eigen. Numerics follow transformers'
// DeepseekV3ForCausalLM (4.57): RMSNorm in fp32 with kv_a/q_a_layernorm at eps 1e-6, interleaved
// (consecutive-pair) RoPE, fp32 router with the correction bias used only to choose experts.
//
// Attention runs on the latent KV cache in one of two equivalent ways (docs/moonlight-architecture.md §8):
// `decompressed` up-projects every cached latent to per-head keys and values (cheap for many
// queries: prefill, training); `absorbed` folds kv_b_proj into the query and the output and
// attends over the 576-wide latents directly (cheap for one query: decode). `automatic` picks
// decompressed for more than one new token.
//
//   moonlight::Model model = moonlight::Model::load(dir);
//   moonlight::KvCache cache(model.config());
//   moonlight::Matrix logits = model.forward(ids, cache);  // [ids.size(), vocab]
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "moonlight/config.hpp"
#include "moonlight/kv_cache.hpp"
#include "moonlight/weights.hpp"
#include "muon/cpu/blas.hpp"
#include "muon/error.hpp"

namespace moonlight {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

enum class AttentionPath { automatic, decompressed, absorbed };
enum class LogitsFor { all_tokens, last_token };

namespace detail {

using ConstMap = Eigen::Map<const Matrix>;
using ConstStridedMap = Eigen::Map<const Matrix, 0, Eigen::OuterStride<>>;

// y[T, out] = x[T, in] · Wᵀ with W row-major [out, in] (torch's nn.Linear without bias).
// One token (decode) is a matrix-vector product.
inline void linear(const float* x, std::int64_t rows, std::int64_t in, const float* w, std::int64_t out, float* y) {
  if (rows == 1)
    muon::cpu::gemv(out, in, 1.0f, w, in, x, 0.0f, y);
  else
    muon::cpu::gemm(muon::Transpose::no, muon::Transpose::yes, rows, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

inline Matrix linear(const Matrix& x, const float* w, std::int64_t out) {
  Matrix y(x.rows(), out);
  linear(x.data(), x.rows(), x.cols(), w, out, y.data());
  return y;
}

// x ← w ⊙ x / sqrt(mean(x²) + eps) for each row of `cols` values at `stride` apart.
inline void rms_norm_rows(float* x, std::int64_t rows, std::int64_t cols, std::int64_t stride, const float* w,
                          double eps) {
  for (std::int64_t t = 0; t < rows; ++t) {
    float* r = x + t * stride;
    double sum = 0.0;
    for (std::int64_t i = 0; i < cols; ++i) sum += double{r[i]} * double{r[i]};
    const auto inv = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(cols) + eps));
    for (std::int64_t i = 0; i < cols; ++i) r[i] = w[i] * (r[i] * inv);
  }
}

inline Matrix rms_norm(const Matrix& x, const float* w, double eps) {
  Matrix y = x;
  rms_norm_rows(y.data(), y.rows(), y.cols(), y.cols(), w, eps);
  return y;
}

inline float silu(float z) { return z / (1.0f + std::exp(-z)); }

// In-place softmax of the first `n` entries of a row; entries from n on (the causal mask's
// future positions) become 0.
inline void softmax_prefix(float* row, std::int64_t n, std::int64_t width) {
  const float m = *std::max_element(row, row + n);
  float sum = 0.0f;
  for (std::int64_t u = 0; u < n; ++u) sum += row[u] = std::exp(row[u] - m);
  const float inv = 1.0f / sum;
  for (std::int64_t u = 0; u < n; ++u) row[u] *= inv;
  std::fill(row + n, row + width, 0.0f);
}

}  // namespace detail

class Model {
 public:
  Model(Config config, Weights weights) : config_(std::move(config)), weights_(std::move(weights)) { bind(); }
  Model(const Model&) = delete;  // the bound views point into weights_
  Model& operator=(const Model&) = delete;
  Model(Model&&) noexcept = default;  // a moved vector keeps its buffer, so the views stay valid
  Model& operator=(Model&&) noexcept = default;

  // config.json and the safetensors of a Hugging Face checkpoint directory.
  static Model load(const std::filesystem::path& dir) {
    Config config = Config::load(dir / "config.json");
    Weights weights = Weights::load(dir, config);
    return {std::move(config), std::move(weights)};
  }

  [[nodiscard]] const Config& config() const { return config_; }
  [[nodiscard]] const Weights& weights() const { return weights_; }

  // Runs `ids` at positions cache.length() onwards, appends their latents to `cache`, and returns
  // the logits [ids.size() or 1, vocab_size].
  Matrix forward(std::span<const std::int32_t> ids, KvCache& cache, LogitsFor which = LogitsFor::all_tokens,
                 AttentionPath path = AttentionPath::automatic) const;

  // One full forward pass over `ids` from position 0: logits [ids.size(), vocab_size].
  Matrix forward(std::span<const std::int32_t> ids) const {
    KvCache cache(config_);
    return forward(ids, cache);
  }

 private:
  struct Mlp {
    const float *gate = nullptr, *up = nullptr, *down = nullptr;
    std::int64_t width = 0;
  };
  struct Layer {
    const float* input_norm = nullptr;
    const float* post_norm = nullptr;
    const float* q_proj = nullptr;  // q_lora_rank null
    const float *q_a_proj = nullptr, *q_a_norm = nullptr, *q_b_proj = nullptr;
    const float *kv_a_proj = nullptr, *kv_a_norm = nullptr, *kv_b_proj = nullptr, *o_proj = nullptr;
    bool moe = false;
    Mlp dense;
    const float *router = nullptr, *router_bias = nullptr;
    std::vector<Mlp> experts;
    Mlp shared;
  };

  const float* ptr(const std::string& name) const { return weights_.values(name).data(); }
  void bind();

  Matrix attention(const Layer& layer, std::int64_t l, const Matrix& x, KvCache& cache, AttentionPath path) const;
  Matrix swiglu(const Mlp& mlp, const Matrix& x) const;
  Matrix moe(const Layer& layer, const Matrix& x) const;
  void rope(float* v, std::int64_t position) const;  // rotates one qk_rope_head_dim vector in place

  Config config_;
  Weights weights_;
  std::vector<Layer> layers_;
  const float *embed_ = nullptr, *final_norm_ = nullptr, *lm_head_ = nullptr;
  std::vector<float> inv_freq_;
  float scale_ = 0.0f;
};

inline void Model::bind() {
  const Config& c = config_;
  embed_ = ptr("model.embed_tokens.weight");
  final_norm_ = ptr("model.norm.weight");
  lm_head_ = c.tie_word_embeddings ? embed_ : ptr("lm_head.weight");
  const auto mlp = [&](const std::string& prefix, std::int64_t width) {
    return Mlp{ptr(prefix + "gate_proj.weight"), ptr(prefix + "up_proj.weight"), ptr(prefix + "down_proj.weight"), width};
  };
  layers_.resize(static_cast<std::size_t>(c.num_hidden_layers));
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    Layer& L = layers_[static_cast<std::size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    L.input_norm = ptr(p + "input_layernorm.weight");
    L.post_norm = ptr(p + "post_attention_layernorm.weight");
    if (c.q_lora_rank) {
      L.q_a_proj = ptr(p + "self_attn.q_a_proj.weight");
      L.q_a_norm = ptr(p + "self_attn.q_a_layernorm.weight");
      L.q_b_proj = ptr(p + "self_attn.q_b_proj.weight");
    } else {
      L.q_proj = ptr(p + "self_attn.q_proj.weight");
    }
    L.kv_a_proj = ptr(p + "self_attn.kv_a_proj_with_mqa.weight");
    L.kv_a_norm = ptr(p + "self_attn.kv_a_layernorm.weight");
    L.kv_b_proj = ptr(p + "self_attn.kv_b_proj.weight");
    L.o_proj = ptr(p + "self_attn.o_proj.weight");
    L.moe = c.is_moe_layer(l);
    if (L.moe) {
      L.router = ptr(p + "mlp.gate.weight");
      L.router_bias = ptr(p + "mlp.gate.e_score_correction_bias");
      for (std::int64_t e = 0; e < c.n_routed_experts; ++e) {
        L.experts.push_back(mlp(p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate_size));
      }
      if (c.n_shared_experts > 0) L.shared = mlp(p + "mlp.shared_experts.", c.shared_intermediate_size());
    } else {
      L.dense = mlp(p + "mlp.", c.intermediate_size);
    }
  }
  // As transformers computes it, in fp32: inv_freq_i = 1 / θ^(2i / d_rope).
  const std::int64_t d = c.qk_rope_head_dim;
  for (std::int64_t i = 0; i < d; i += 2) {
    inv_freq_.push_back(1.0f / std::pow(static_cast<float>(c.rope_theta), static_cast<float>(i) / static_cast<float>(d)));
  }
  scale_ = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.qk_head_dim())));
}

// Interleaved RoPE: the pair (v[2i], v[2i+1]) rotates by position·inv_freq_i. transformers'
// apply_rotary_pos_emb_interleave de-interleaves first and rotates halves, which permutes q and k
// alike, so every q·k is the same; rotating NeoX halves of these weights instead is the silent
// bug of docs/moonlight-architecture.md §3.4.
inline void Model::rope(float* v, std::int64_t position) const {
  for (std::size_t i = 0; i < inv_freq_.size(); ++i) {
    const float angle = static_cast<float>(position) * inv_freq_[i];  // fp32 product, as transformers
    const float cos = std::cos(angle), sin = std::sin(angle);
    const float x0 = v[2 * i], x1 = v[2 * i + 1];
    v[2 * i] = x0 * cos - x1 * sin;
    v[2 * i + 1] = x0 * sin + x1 * cos;
  }
}

inline Matrix Model::swiglu(const Mlp& mlp, const Matrix& x) const {
  Matrix gate = detail::linear(x, mlp.gate, mlp.width);
  const Matrix up = detail::linear(x, mlp.up, mlp.width);
  gate = gate.unaryExpr([](float z) { return detail::silu(z); }).cwiseProduct(up);
  return detail::linear(gate, mlp.down, config_.hidden_size);
}

inline Matrix Model::moe(const Layer& layer, const Matrix& x) const {
  const Config& c = config_;
  const std::int64_t tokens = x.rows(), experts = c.n_routed_experts, k = c.num_experts_per_tok;
  const std::int64_t per_group = experts / c.n_group;
  const Matrix router_logits = detail::linear(x, layer.router, experts);  // fp32, as transformers

  // Routing: choose by sigmoid score + correction bias, weight by the unbiased score.
  std::vector<std::vector<std::pair<std::int64_t, float>>> routed(static_cast<std::size_t>(experts));  // (token, weight)
  std::vector<float> score(static_cast<std::size_t>(experts)), choice(score.size()), group_score(static_cast<std::size_t>(c.n_group));
  std::vector<std::int64_t> order(score.size()), groups(group_score.size());
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t e = 0; e < experts; ++e) {
      score[e] = 1.0f / (1.0f + std::exp(-router_logits(t, e)));
      choice[e] = score[e] + layer.router_bias[e];
    }
    if (c.n_group > 1) {
      // Group score: the sum of its two best choice scores; keep topk_group groups and set the
      // others' choice scores to 0.0, as transformers does (DeepSeek's inference code uses -inf).
      for (std::int64_t g = 0; g < c.n_group; ++g) {
        const auto first = choice.begin() + g * per_group;
        std::vector<float> members(first, first + per_group);
        std::partial_sort(members.begin(), members.begin() + 2, members.end(), std::greater<>());
        group_score[g] = members[0] + members[1];
      }
      std::iota(groups.begin(), groups.end(), 0);
      std::partial_sort(groups.begin(), groups.begin() + c.topk_group, groups.end(),
                        [&](std::int64_t a, std::int64_t b) { return group_score[a] > group_score[b] || (group_score[a] == group_score[b] && a < b); });
      std::vector<bool> keep(group_score.size(), false);
      for (std::int64_t i = 0; i < c.topk_group; ++i) keep[groups[i]] = true;
      for (std::int64_t e = 0; e < experts; ++e) {
        if (!keep[e / per_group]) choice[e] = 0.0f;
      }
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](std::int64_t a, std::int64_t b) { return choice[a] > choice[b] || (choice[a] == choice[b] && a < b); });
    float sum = 0.0f;
    for (std::int64_t j = 0; j < k; ++j) sum += score[order[j]];
    const float norm = c.norm_topk_prob ? 1.0f / (sum + 1e-20f) : 1.0f;
    for (std::int64_t j = 0; j < k; ++j) {
      routed[order[j]].emplace_back(t, score[order[j]] * norm * static_cast<float>(c.routed_scaling_factor));
    }
  }

  // Each expert runs once on the tokens routed to it.
  Matrix out = Matrix::Zero(tokens, c.hidden_size);
  for (std::int64_t e = 0; e < experts; ++e) {
    const auto& list = routed[e];
    if (list.empty()) continue;
    Matrix xe(static_cast<std::int64_t>(list.size()), c.hidden_size);
    for (std::size_t i = 0; i < list.size(); ++i) xe.row(static_cast<std::int64_t>(i)) = x.row(list[i].first);
    const Matrix ye = swiglu(layer.experts[e], xe);
    for (std::size_t i = 0; i < list.size(); ++i) out.row(list[i].first) += list[i].second * ye.row(static_cast<std::int64_t>(i));
  }
  if (c.n_shared_experts > 0) out += swiglu(layer.shared, x);
  return out;
}

inline Matrix Model::attention(const Layer& L, std::int64_t l, const Matrix& x, KvCache& cache, AttentionPath path) const {
  const Config& c = config_;
  const std::int64_t T = x.rows(), H = c.num_attention_heads, r = c.kv_lora_rank, dr = c.qk_rope_head_dim;
  const std::int64_t dn = c.qk_nope_head_dim, dv = c.v_head_dim, dqk = c.qk_head_dim(), row = r + dr;
  const std::int64_t pos0 = cache.length(), S = pos0 + T;

  Matrix q;
  if (c.q_lora_rank) {
    q = detail::linear(detail::rms_norm(detail::linear(x, L.q_a_proj, *c.q_lora_rank), L.q_a_norm, Config::latent_norm_eps),
                       L.q_b_proj, H * dqk);
  } else {
    q = detail::linear(x, L.q_proj, H * dqk);
  }
  // [c ; k_pe] per token: normalise the latent, rotate the shared rope key; that row is the cache.
  Matrix kv_a = detail::linear(x, L.kv_a_proj, row);
  detail::rms_norm_rows(kv_a.data(), T, r, row, L.kv_a_norm, Config::latent_norm_eps);
  for (std::int64_t t = 0; t < T; ++t) {
    rope(kv_a.data() + t * row + r, pos0 + t);
    for (std::int64_t h = 0; h < H; ++h) rope(q.data() + t * H * dqk + h * dqk + dn, pos0 + t);
  }
  cache.append(l, {kv_a.data(), static_cast<std::size_t>(kv_a.size())});
  const float* rows = cache.layer(l).data();
  const detail::ConstStridedMap latent(rows, S, r, Eigen::OuterStride<>(row));
  const detail::ConstStridedMap k_pe(rows + r, S, dr, Eigen::OuterStride<>(row));
  const detail::ConstMap kv_b(L.kv_b_proj, H * (dn + dv), r);

  if (path == AttentionPath::automatic) path = T > 1 ? AttentionPath::decompressed : AttentionPath::absorbed;
  Matrix out(T, H * dv);
  if (path == AttentionPath::decompressed) {
    // Per-head keys and values of every cached token: [S, H·(dn + dv)].
    const Matrix kv = latent * kv_b.transpose();
#pragma omp parallel for if (T * S * H > (1 << 15))
    for (std::int64_t h = 0; h < H; ++h) {
      const auto q_nope = q.block(0, h * dqk, T, dn);
      const auto q_pe = q.block(0, h * dqk + dn, T, dr);
      Matrix scores = q_nope * kv.block(0, h * (dn + dv), S, dn).transpose();
      scores.noalias() += q_pe * k_pe.transpose();
      scores *= scale_;
      for (std::int64_t t = 0; t < T; ++t) detail::softmax_prefix(scores.row(t).data(), pos0 + t + 1, S);
      out.block(0, h * dv, T, dv).noalias() = scores * kv.block(0, h * (dn + dv) + dn, S, dv);
    }
  } else {
    // Absorbed: q̃_h = W_UK,hᵀ q_nope,h attends over the latents (one shared "KV head" of width
    // r + dr); the result is up-projected once by W_UV,h. Rows are (head, token) pairs.
    Matrix q_latent(H * T, r), q_pe(H * T, dr);
    for (std::int64_t h = 0; h < H; ++h) {
      q_latent.block(h * T, 0, T, r).noalias() = q.block(0, h * dqk, T, dn) * kv_b.block(h * (dn + dv), 0, dn, r);
      q_pe.block(h * T, 0, T, dr) = q.block(0, h * dqk + dn, T, dr);
    }
    Matrix scores = q_latent * latent.transpose();
    scores.noalias() += q_pe * k_pe.transpose();
    scores *= scale_;
    for (std::int64_t i = 0; i < H * T; ++i) detail::softmax_prefix(scores.row(i).data(), pos0 + i % T + 1, S);
    const Matrix context = scores * latent;  // [H·T, r]
    for (std::int64_t h = 0; h < H; ++h) {
      out.block(0, h * dv, T, dv).noalias() =
          context.block(h * T, 0, T, r) * kv_b.block(h * (dn + dv) + dn, 0, dv, r).transpose();
    }
  }
  return detail::linear(out, L.o_proj, c.hidden_size);
}

inline Matrix Model::forward(std::span<const std::int32_t> ids, KvCache& cache, LogitsFor which,
                             AttentionPath path) const {
  const Config& c = config_;
  const auto T = static_cast<std::int64_t>(ids.size());
  if (T == 0) throw muon::InvalidArgument("forward needs at least one token id");
  Matrix h(T, c.hidden_size);
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int32_t id = ids[static_cast<std::size_t>(t)];
    if (id < 0 || id >= c.vocab_size) {
      throw muon::InvalidArgument("token id " + std::to_string(id) + " at index " + std::to_string(t) +
                                  " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
    }
    h.row(t) = detail::ConstMap(embed_ + static_cast<std::int64_t>(id) * c.hidden_size, 1, c.hidden_size);
  }
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const Layer& L = layers_[static_cast<std::size_t>(l)];
    h += attention(L, l, detail::rms_norm(h, L.input_norm, c.rms_norm_eps), cache, path);
    const Matrix hn = detail::rms_norm(h, L.post_norm, c.rms_norm_eps);
    h += L.moe ? moe(L, hn) : swiglu(L.dense, hn);
  }
  cache.commit(T);
  Matrix last = which == LogitsFor::last_token ? Matrix(h.bottomRows(1)) : std::move(h);
  return detail::linear(detail::rms_norm(last, final_norm_, c.rms_norm_eps), lm_head_, c.vocab_size);
}

}  // namespace moonlight
