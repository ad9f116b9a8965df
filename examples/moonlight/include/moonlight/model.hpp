// moonlight/model.hpp: inference with the Moonlight / DeepseekV3 network (network.hpp) on the
// CPU, over a KV cache, in fp32 arithmetic.
//
// `Model::map` reads a checkpoint's weights where it keeps them, in its dtype (BF16, F16 or F32;
// mapped_weights.hpp): the resident memory is about the checkpoint's size. `Model::load` and the
// constructor hold fp32 weights in a `Weights` buffer (what training reads and writes).
//
// Attention runs on the latent KV cache (kv_cache.hpp) in one of two equivalent ways
// (docs/moonlight-architecture.md §8, layers/attention.hpp): `decompressed` for many new tokens
// (prefill), `absorbed` for one (decode); `automatic` picks by the number of new tokens. The
// layers are the training pass's (backward.hpp), run without saving activations.
//
//   moonlight::Model model = moonlight::Model::map(dir);
//   moonlight::KvCache cache(model.config());
//   moonlight::Matrix logits = model.forward(ids, cache);  // [ids.size(), vocab]
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "moonlight/config.hpp"
#include "moonlight/kv_cache.hpp"
#include "moonlight/mapped_weights.hpp"
#include "moonlight/network.hpp"
#include "moonlight/weights.hpp"
#include "muon/error.hpp"

namespace moonlight {

using Matrix = layers::Mat<float>;

enum class LogitsFor { all_tokens, last_token };

class Model {
 public:
  Model(Config config, Weights weights) : state_(std::make_unique<State>(std::move(config), std::move(weights))) {}
  Model(Config config, MappedWeights weights)
      : state_(std::make_unique<State>(std::move(config), std::move(weights))) {}

  // config.json and the safetensors of a Hugging Face checkpoint directory, widened to fp32.
  static Model load(const std::filesystem::path& dir) {
    Config config = Config::load(dir / "config.json");
    Weights weights = Weights::load(dir, config);
    return {std::move(config), std::move(weights)};
  }
  // The same, read in place from the memory-mapped files.
  static Model map(const std::filesystem::path& dir) {
    Config config = Config::load(dir / "config.json");
    MappedWeights weights = MappedWeights::open(dir, config);
    return {std::move(config), std::move(weights)};
  }

  [[nodiscard]] const Config& config() const { return state_->config; }
  // The fp32 weight buffer; a mapped model has none.
  [[nodiscard]] const Weights& weights() const {
    if (!state_->weights)
      throw muon::InvalidArgument("this model reads its weights in place from a memory-mapped checkpoint (Model::map), "
                                  "and has no fp32 weight buffer; use Model::load for one");
    return *state_->weights;
  }

  // Runs `ids` at positions cache.length() onwards, appends their latents to `cache`, and returns
  // the logits [ids.size() or 1, vocab_size].
  Matrix forward(std::span<const std::int32_t> ids, KvCache& cache, LogitsFor which = LogitsFor::all_tokens,
                 AttentionPath path = AttentionPath::automatic) const {
    const Network<float>& net = state_->network;
    if (ids.empty()) throw muon::InvalidArgument("forward needs at least one token id");
    net.embedding.check(ids, "input");
    Matrix h = net.embedding.forward(ids);
    for (std::size_t l = 0; l < net.decoder.size(); ++l)
      net.decoder[l].forward(h, nullptr, 0.0f, &cache, static_cast<std::int64_t>(l), path);
    cache.commit(static_cast<std::int64_t>(ids.size()));
    if (which == LogitsFor::last_token) return net.head.forward(Matrix(h.bottomRows(1)));
    return net.head.forward(h);
  }

  // One full forward pass over `ids` from position 0: logits [ids.size(), vocab_size].
  Matrix forward(std::span<const std::int32_t> ids) const {
    KvCache cache(config());
    return forward(ids, cache);
  }

 private:
  // Behind a pointer: the network points into the config and the weights, which must not move.
  struct State {
    State(Config c, Weights w)
        : config(std::move(c)), weights(std::move(w)), network(config, *weights, std::span<const float>(weights->data())) {}
    State(Config c, MappedWeights w)
        : config(std::move(c)), mapped(std::move(w)), network(config, [this](const std::string& name) {
            return mapped->weight(name);
          }) {}
    Config config;
    std::optional<Weights> weights;
    std::optional<MappedWeights> mapped;
    Network<float> network;
  };
  std::unique_ptr<const State> state_;
};

}  // namespace moonlight
