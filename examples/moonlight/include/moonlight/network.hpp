// moonlight/network.hpp: the Moonlight / DeepseekV3 network bound once onto its weights (a buffer or
// a memory-mapped checkpoint): the decoder layers that inference (model.hpp) and training (backward.hpp) run.
//
// Pre-norm decoder (docs/moonlight-architecture.md §3): embed → per layer h += MLA(RMSNorm(h)),
// h += FFN(RMSNorm(h)) with a dense SwiGLU for the first `first_k_dense_replace` layers and the
// sigmoid-routed MoE (plus shared experts) after → RMSNorm → lm_head. Numerics follow
// transformers' DeepseekV3ForCausalLM (4.57): RMSNorm with kv_a/q_a_layernorm at eps 1e-6,
// interleaved RoPE, fp32 router with the correction bias used only to choose experts. The blocks
// are in layers/, each with its forward and backward; this file composes them once.
//
//   const moonlight::Network<float> net(config, weights, weights.data(), grads);  // grads: {} to infer
//   Mat<float> h = net.embedding.forward(ids);
//   for (l…) net.decoder[l].forward(h, &tapes[l]);
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "moonlight/config.hpp"
#include "moonlight/kv_cache.hpp"
#include "moonlight/layers/attention.hpp"
#include "moonlight/layers/embedding.hpp"
#include "moonlight/layers/linear.hpp"
#include "moonlight/layers/lm_head.hpp"
#include "moonlight/layers/mlp.hpp"
#include "moonlight/layers/moe.hpp"
#include "moonlight/layers/rms_norm.hpp"
#include "moonlight/layers/rope.hpp"
#include "moonlight/weights.hpp"
#include "muon/error.hpp"

namespace moonlight {

template <class S>
struct DecoderLayer {
  layers::RmsNorm<S> input_norm, post_norm;
  layers::Attention<S> attention;
  bool is_moe = false;
  layers::SwiGlu<S> dense;  // the first first_k_dense_replace layers
  layers::Moe<S> moe;       // the others

  struct Tape {
    typename layers::RmsNorm<S>::Tape input_norm, post_norm;
    typename layers::Attention<S>::Tape attention;
    typename layers::SwiGlu<S>::Tape dense;
    typename layers::Moe<S>::Tape moe;
  };

  // h ← h + MLA(RMSNorm(h)); h ← h + FFN(RMSNorm(h)). Cache, path and the number of stacked
  // sequences as Attention::forward.
  void forward(layers::Mat<S>& h, Tape* tape = nullptr, S aux_alpha = 0, KvCache* cache = nullptr, std::int64_t layer = 0,
               AttentionPath path = AttentionPath::automatic, std::int64_t sequences = 1) const {
    h += attention.forward(input_norm.forward(h, tape ? &tape->input_norm : nullptr), tape ? &tape->attention : nullptr,
                           cache, layer, path, sequences);
    const layers::Mat<S> hn = post_norm.forward(h, tape ? &tape->post_norm : nullptr);
    h += is_moe ? moe.forward(hn, tape ? &tape->moe : nullptr, aux_alpha, sequences)
                : dense.forward(hn, tape ? &tape->dense : nullptr);
  }

  // dh: d loss / d (this layer's output), becomes d loss / d (its input).
  void backward(const Tape& tape, layers::Mat<S>& dh) const {
    const layers::Mat<S> dhn = is_moe ? moe.backward(tape.moe, dh) : dense.backward(tape.dense, dh);
    dh += post_norm.backward(tape.post_norm, dhn);
    dh += input_norm.backward(tape.input_norm, attention.backward(tape.attention, dh));
  }
};

// Every weight of the model by role. Binds views only, so it is cheap to make per pass; it points
// into `c` and into itself, so it is built in place.
template <class S>
class Network {
 public:
  // Each weight as `t(name)` gives it (a view into a buffer, or a checkpoint's memory map).
  Network(const Config& c, const std::function<layers::Weight<S>(const std::string&)>& t) : rope(c) {
    const auto mlp = [&](const std::string& p) {
      return layers::SwiGlu<S>{t(p + "gate_proj.weight"), t(p + "up_proj.weight"), t(p + "down_proj.weight")};
    };
    embedding.table = t("model.embed_tokens.weight");
    head = {{t("model.norm.weight"), c.rms_norm_eps}, c.tie_word_embeddings ? embedding.table : t("lm_head.weight")};
    decoder.resize(static_cast<std::size_t>(c.num_hidden_layers));
    for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
      DecoderLayer<S>& L = decoder[static_cast<std::size_t>(l)];
      const std::string p = "model.layers." + std::to_string(l) + ".";
      L.input_norm = {t(p + "input_layernorm.weight"), c.rms_norm_eps};
      L.post_norm = {t(p + "post_attention_layernorm.weight"), c.rms_norm_eps};
      layers::Attention<S>& A = L.attention;
      A.c = &c;
      A.rope = &rope;
      if (c.q_lora_rank) {
        A.q_a_proj = t(p + "self_attn.q_a_proj.weight");
        A.q_a_norm = {t(p + "self_attn.q_a_layernorm.weight"), Config::latent_norm_eps};
        A.q_b_proj = t(p + "self_attn.q_b_proj.weight");
      } else {
        A.q_proj = t(p + "self_attn.q_proj.weight");
      }
      A.kv_a_proj = t(p + "self_attn.kv_a_proj_with_mqa.weight");
      A.kv_a_norm = {t(p + "self_attn.kv_a_layernorm.weight"), Config::latent_norm_eps};
      A.kv_b_proj = t(p + "self_attn.kv_b_proj.weight");
      A.o_proj = t(p + "self_attn.o_proj.weight");
      L.is_moe = c.is_moe_layer(l);
      if (L.is_moe) {
        L.moe.c = &c;
        L.moe.router = {&c, t(p + "mlp.gate.weight"), t(p + "mlp.gate.e_score_correction_bias")};
        for (std::int64_t e = 0; e < c.n_routed_experts; ++e)
          L.moe.experts.push_back(mlp(p + "mlp.experts." + std::to_string(e) + "."));
        if (c.n_shared_experts > 0) L.moe.shared = mlp(p + "mlp.shared_experts.");
      } else {
        L.dense = mlp(p + "mlp.");
      }
    }
  }
  // Viewed in `values` (laid out as `layout`, weights.hpp), with gradient slots at the same
  // offsets of `grads` (empty: inference).
  Network(const Config& c, const Weights& layout, std::span<const S> values, std::span<S> grads = {})
      : Network(c, in_buffer(layout, values, grads)) {}
  Network(const Network&) = delete;  // the layers point at rope

  Network& operator=(const Network&) = delete;

  layers::Rope rope;
  layers::Embedding<S> embedding;
  std::vector<DecoderLayer<S>> decoder;
  layers::LmHead<S> head;

 private:
  static std::function<layers::Weight<S>(const std::string&)> in_buffer(const Weights& layout, std::span<const S> values,
                                                                         std::span<S> grads) {
    const std::size_t size = layout.data().size();
    if (values.size() != size || (!grads.empty() && grads.size() != size))
      throw muon::ShapeMismatch("values have " + std::to_string(values.size()) + " and gradients " +
                                std::to_string(grads.size()) + " entries; the weights' layout needs " + std::to_string(size));
    return [&layout, values, grads](const std::string& name) {
      const TensorSpec& s = layout.spec(name);
      const std::int64_t rows = s.shape.size() == 2 ? s.shape[0] : 1;
      return layers::Weight<S>{values.data() + s.offset, grads.empty() ? nullptr : grads.data() + s.offset, rows,
                               s.shape.back()};
    };
  }
};

}  // namespace moonlight
