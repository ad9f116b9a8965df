// moonlight/layers/rope.hpp: interleaved rotary position embedding (docs/moonlight-architecture.md
// §3.4) of the rope channels of q and of the shared key k_pe.
//
// The pair (v[2i], v[2i+1]) rotates by position·inv_freq_i. transformers'
// apply_rotary_pos_emb_interleave de-interleaves first and rotates halves, which permutes q and k
// alike, so every q·k is the same; rotating NeoX halves of these weights instead is the silent bug
// of docs/moonlight-architecture.md §3.4. The rotation's backward is the inverse rotation (its
// transpose).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "moonlight/config.hpp"

namespace moonlight::layers {

class Rope {
 public:
  // As transformers computes it, in fp32: inv_freq_i = 1 / θ^(2i / d_rope).
  explicit Rope(const Config& c) {
    const std::int64_t d = c.qk_rope_head_dim;
    for (std::int64_t i = 0; i < d; i += 2)
      inv_freq_.push_back(1.0f / std::pow(static_cast<float>(c.rope_theta), static_cast<float>(i) / static_cast<float>(d)));
  }

  // Rotates one qk_rope_head_dim vector in place; `inverse` rotates back.
  template <class S>
  void rotate(S* v, std::int64_t position, bool inverse = false) const {
    for (std::size_t i = 0; i < inv_freq_.size(); ++i) {
      const float angle = static_cast<float>(position) * inv_freq_[i];  // fp32 product, as transformers
      const S cos = static_cast<S>(std::cos(angle));
      const S sin = static_cast<S>(inverse ? -std::sin(angle) : std::sin(angle));
      const S x0 = v[2 * i], x1 = v[2 * i + 1];
      v[2 * i] = x0 * cos - x1 * sin;
      v[2 * i + 1] = x0 * sin + x1 * cos;
    }
  }

 private:
  std::vector<float> inv_freq_;
};

}  // namespace moonlight::layers
