// moonlight/backward.hpp: the training pass: mean next-token cross-entropy of the Moonlight model
// and its gradient with respect to every weight, and the forward-only loss for evaluation
// (`forward_loss`).
//
// Both run the network of network.hpp (the layers inference runs) from position 0, causal, with
// decompressed attention. `loss_and_gradients` keeps each block's activations on its tape and
// back-propagates into a gradient buffer laid out like `Weights::data()`, so that
// `weights.parameter_table(grads)` feeds muon::Optimizer directly. Gradients are *added* to the
// buffer (gradient accumulation over micro-batches: zero it before the first one and scale the
// loss as you average). The router's selection and e_score_correction_bias get no gradient
// (layers/router.hpp); DeepSeek-V3's optional sequence-wise balance loss (AuxLoss) adds its
// gradient through every expert's router score.
//
// Templated on the scalar: float for training, double for the finite-difference checks of
// test_backward.cpp.
//
//   std::vector<float> grads(model.weights().data().size(), 0.0f);
//   float loss = moonlight::loss_and_gradients(model, inputs, targets, grads);
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moonlight/balancing.hpp"
#include "moonlight/config.hpp"
#include "moonlight/model.hpp"
#include "moonlight/network.hpp"
#include "moonlight/qk_clip.hpp"
#include "moonlight/weights.hpp"
#include "muon/error.hpp"

namespace moonlight {

// The optional sequence-wise balance loss of DeepSeek-V3 (docs/moonlight-architecture.md §6):
// α·Σ_layers L_Bal is added to the objective (its value also to *value when given). α = 0 leaves
// the pass unchanged.
struct AuxLoss {
  double alpha = 0.0;
  double* value = nullptr;
};

namespace detail {

// Checks a pass's inputs and targets: one target per input, every id in the vocabulary.
template <class S>
void check_pass(const Network<S>& net, std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets,
                const char* what) {
  if (inputs.empty()) throw muon::InvalidArgument(std::string(what) + " needs at least one input token");
  if (targets.size() != inputs.size())
    throw muon::ShapeMismatch("targets has " + std::to_string(targets.size()) + " ids; inputs has " +
                              std::to_string(inputs.size()) + " (one target per input)");
  net.embedding.check(inputs, "input");
  net.embedding.check(targets, "target");
}

}  // namespace detail

// Mean cross-entropy of the model's next-token logits for `inputs` (positions 0..T-1) against
// `targets` (T ids: targets[t] is the token after inputs[t]), and d loss / d weights added into
// `grads`. `layout` gives each tensor's offset; `values` and `grads` are buffers of its size.
// With `load`, the tokens routed to each expert are added to load->tokens[layer][expert] (sized
// here on first use; dense layers keep an empty row), for the balancing rule of balancing.hpp.
// With aux.alpha > 0 the returned objective and the gradients include the balance loss. With
// `max_logits`, each layer's per-head largest attention logit is max-ed into it (sized here on
// first use), for QK-clip (qk_clip.hpp). `sequences` > 1: inputs and targets stack that many
// sequences of equal length, each from position 0 and attending within itself; the result and the
// gradients are the sums over them of one sequence's (the trainer passes each thread's sequences
// at once, so that every product has more rows: docs/performance.md).
template <class S>
S loss_and_gradients(const Config& c, const Weights& layout, std::span<const S> values,
                     std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets, std::span<S> grads,
                     ExpertLoad* load = nullptr, const AuxLoss& aux = {}, MaxLogits* max_logits = nullptr,
                     std::int64_t sequences = 1) {
  if (!(aux.alpha >= 0.0) || !std::isfinite(aux.alpha))
    throw muon::InvalidArgument("AuxLoss.alpha must be finite and >= 0, got " + std::to_string(aux.alpha));
  if (grads.size() != values.size())
    throw muon::ShapeMismatch("gradients have " + std::to_string(grads.size()) + " entries; values have " +
                              std::to_string(values.size()));
  const Network<S> net(c, layout, values, grads);
  detail::check_pass(net, inputs, targets, "loss_and_gradients");
  const auto rows = static_cast<std::int64_t>(inputs.size());
  if (sequences < 1 || rows % sequences != 0)
    throw muon::InvalidArgument("loss_and_gradients: " + std::to_string(rows) + " input tokens are not " +
                                std::to_string(sequences) + " sequences of equal length");

  std::vector<typename DecoderLayer<S>::Tape> tapes(net.decoder.size());
  layers::Mat<S> h = net.embedding.forward(inputs);
  S aux_total = 0;
  for (std::size_t l = 0; l < net.decoder.size(); ++l) {
    const DecoderLayer<S>& L = net.decoder[l];
    L.forward(h, &tapes[l], static_cast<S>(aux.alpha), nullptr, 0, AttentionPath::decompressed, sequences);
    if (max_logits) {
      if (max_logits->heads.empty()) *max_logits = MaxLogits::empty(c);
      max_logits->add(l, std::span<const S>(tapes[l].attention.max_logit));
    }
    if (!L.is_moe) continue;
    aux_total += tapes[l].moe.aux_value;
    if (load) {
      load->tokens.resize(net.decoder.size());
      auto& row = load->tokens[l];
      row.resize(static_cast<std::size_t>(c.n_routed_experts), 0);
      const auto& tokens_of = tapes[l].moe.routing.tokens_of;
      for (std::size_t e = 0; e < row.size(); ++e) row[e] += static_cast<std::int64_t>(tokens_of[e].size());
    }
  }
  typename layers::LmHead<S>::Tape head_tape;
  layers::Mat<S> logits = net.head.forward(h, &head_tape);
  // logits now hold d loss / d logits
  const S loss = layers::cross_entropy(logits, targets, true, rows / sequences);
  if (aux.value != nullptr) *aux.value = static_cast<double>(aux_total);

  layers::Mat<S> dh = net.head.backward(head_tape, logits);
  for (std::size_t l = net.decoder.size(); l-- > 0;) net.decoder[l].backward(tapes[l], dh);
  net.embedding.backward(inputs, dh);
  return loss + aux_total;
}

// The same mean cross-entropy, forward only (no tapes, no gradients, no balance loss): evaluation.
template <class S>
S forward_loss(const Config& c, const Weights& layout, std::span<const S> values, std::span<const std::int32_t> inputs,
       std::span<const std::int32_t> targets) {
  const Network<S> net(c, layout, values);
  detail::check_pass(net, inputs, targets, "forward_loss");
  layers::Mat<S> h = net.embedding.forward(inputs);
  for (const DecoderLayer<S>& L : net.decoder) L.forward(h);
  layers::Mat<S> logits = net.head.forward(h);
  return layers::cross_entropy(logits, targets, false);
}

// The fp32 training entry point on a loaded model's weights.
inline float loss_and_gradients(const Model& model, std::span<const std::int32_t> inputs,
                                std::span<const std::int32_t> targets, std::span<float> grads,
                                ExpertLoad* load = nullptr, const AuxLoss& aux = {}, MaxLogits* max_logits = nullptr) {
  return loss_and_gradients<float>(model.config(), model.weights(), model.weights().data(), inputs, targets, grads,
                                   load, aux, max_logits);
}

}  // namespace moonlight
