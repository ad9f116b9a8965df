// moonlight/kv_cache.hpp: the weight-absorbed MLA key/value cache.
//
// Multi-head latent attention needs, per past token and layer, only the normalised latent
// c (kv_lora_rank values) and the rotated shared rope key k_pe (qk_rope_head_dim values): the
// per-head keys and values are linear in c, so attention can run against c directly
// (docs/moonlight-architecture.md §8). For Moonlight that is 512 + 64 = 576 floats per token and layer, 8.9×
// less than caching the decompressed K and V of 16 heads.
//
//   moonlight::KvCache cache(config);
//   model.forward(prompt, cache);          // appends the prompt's rows
//   cache.bytes_per_token();               // layers × (kv_lora_rank + qk_rope_head_dim) × 4
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "moonlight/config.hpp"
#include "muon/error.hpp"

namespace moonlight {

class KvCache {
 public:
  explicit KvCache(const Config& c)
      : latent_(c.kv_lora_rank), rope_(c.qk_rope_head_dim), layers_(static_cast<std::size_t>(c.num_hidden_layers)) {}

  // Tokens cached so far; the next token's position.
  [[nodiscard]] std::int64_t length() const { return length_; }
  [[nodiscard]] std::int64_t row_width() const { return latent_ + rope_; }  // [c ; k_pe]
  [[nodiscard]] std::int64_t latent_width() const { return latent_; }
  [[nodiscard]] std::int64_t rope_width() const { return rope_; }
  [[nodiscard]] std::size_t bytes_per_token() const {
    return layers_.size() * static_cast<std::size_t>(row_width()) * sizeof(float);
  }
  // Bytes held for the cached tokens (excluding spare capacity).
  [[nodiscard]] std::size_t bytes() const { return bytes_per_token() * static_cast<std::size_t>(length_); }

  // Row-major [length (after the pending append), row_width] rows of one layer.
  [[nodiscard]] std::span<const float> layer(std::int64_t l) const { return layers_[static_cast<std::size_t>(l)]; }

  // Appends `rows` ([n, row_width]) to layer l. Every layer gets the same n tokens in one forward
  // pass; `commit(n)` then advances the length.
  void append(std::int64_t l, std::span<const float> rows) {
    auto& v = layers_[static_cast<std::size_t>(l)];
    v.insert(v.end(), rows.begin(), rows.end());
  }
  void commit(std::int64_t n) { length_ += n; }

  // Forgets every token from position n on (to rewind a conversation or a benchmark).
  void truncate(std::int64_t n) {
    if (n < 0 || n > length_) {
      throw muon::InvalidArgument("cannot truncate a KV cache of " + std::to_string(length_) + " tokens to " + std::to_string(n));
    }
    for (auto& v : layers_) v.resize(static_cast<std::size_t>(n * row_width()));
    length_ = n;
  }
  void clear() { truncate(0); }

 private:
  std::int64_t latent_, rope_;
  std::vector<std::vector<float>> layers_;
  std::int64_t length_ = 0;
};

}  // namespace moonlight
