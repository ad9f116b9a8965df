// moonlight/generate.hpp: token generation on the latent KV cache: greedy, temperature, top-k and
// top-p sampling from a seed, stop tokens, and a callback per generated token for streaming.
//
// The prompt runs as one decompressed forward pass (prefill); each new token then runs alone
// through the weight-absorbed attention (decode), reading only the cached latents.
// Sampling follows transformers' order: logits / temperature, keep the top_k, keep the smallest
// set whose probability reaches top_p, renormalise, draw. temperature 0 is greedy (argmax, the
// lowest id on ties), so is top_k 1.
//
//   moonlight::KvCache cache(model.config());
//   moonlight::generate(model, cache, prompt, {.max_new_tokens = 64, .temperature = 0.7f, .seed = 1},
//                       [](std::int32_t id) { std::cout << tok.decode(std::span(&id, 1)) << std::flush; return true; });
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <utility>
#include <span>
#include <vector>

#include "moonlight/kv_cache.hpp"
#include "moonlight/model.hpp"
#include "muon/error.hpp"

namespace moonlight {

struct SamplingOptions {
  std::int64_t max_new_tokens = 128;
  float temperature = 0.0f;  // 0: greedy
  std::int64_t top_k = 0;    // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  std::uint64_t seed = 0;
  std::vector<std::int32_t> stop_ids{};  // generation ends after emitting one of these

  void validate() const {
    if (max_new_tokens < 0) throw muon::InvalidArgument("max_new_tokens must be >= 0");
    if (!(temperature >= 0.0f) || !std::isfinite(temperature)) throw muon::InvalidArgument("temperature must be a finite value >= 0");
    if (top_k < 0) throw muon::InvalidArgument("top_k must be >= 0 (0 disables it)");
    if (!(top_p > 0.0f && top_p <= 1.0f)) throw muon::InvalidArgument("top_p must be in (0, 1]");
  }
};

// Draws token ids from logits; deterministic for a given seed (mt19937_64 and a uniform double
// built from its 53 high bits, so the draw does not depend on the standard library).
class Sampler {
 public:
  explicit Sampler(SamplingOptions options) : options_(std::move(options)), rng_(options_.seed) { options_.validate(); }

  [[nodiscard]] std::int32_t sample(std::span<const float> logits) {
    const auto n = static_cast<std::int64_t>(logits.size());
    if (options_.temperature == 0.0f || options_.top_k == 1) {
      return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
    // Candidates by logit, highest first, lowest id first on ties.
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
    std::iota(ids.begin(), ids.end(), 0);
    const auto by_logit = [&](std::int32_t a, std::int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    const std::int64_t k = options_.top_k > 0 ? std::min(options_.top_k, n) : n;
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), by_logit);
    ids.resize(static_cast<std::size_t>(k));

    std::vector<double> p(ids.size());
    const double max = logits[ids[0]];
    double sum = 0.0;
    for (std::size_t i = 0; i < ids.size(); ++i) sum += p[i] = std::exp((logits[ids[i]] - max) / options_.temperature);
    // top-p: the smallest prefix whose probability reaches top_p (the first token always stays).
    std::size_t keep = ids.size();
    if (options_.top_p < 1.0f) {
      double mass = 0.0;
      for (std::size_t i = 0; i < ids.size(); ++i) {
        mass += p[i] / sum;
        if (mass >= options_.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    const double total = std::accumulate(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(keep), 0.0);
    const double u = static_cast<double>(rng_() >> 11) * 0x1p-53 * total;
    double acc = 0.0;
    for (std::size_t i = 0; i < keep; ++i) {
      acc += p[i];
      if (u < acc) return ids[i];
    }
    return ids[keep - 1];
  }

  [[nodiscard]] const SamplingOptions& options() const { return options_; }

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
};

// Continues `prompt` (appended to whatever `cache` holds) by up to max_new_tokens tokens and
// returns them; `on_token` sees each one as it is produced and may stop early by returning false.
// A stop id is emitted (and passed to on_token) and then ends generation. The last returned
// token has not been run through the model, so it is not in the cache: a caller that continues
// the same cache must put it first in its next prompt.
inline std::vector<std::int32_t> generate(const Model& model, KvCache& cache, std::span<const std::int32_t> prompt,
                                          const SamplingOptions& options,
                                          const std::function<bool(std::int32_t)>& on_token = {}) {
  Sampler sampler(options);
  std::vector<std::int32_t> out;
  if (options.max_new_tokens == 0) return out;
  Matrix logits = model.forward(prompt, cache, LogitsFor::last_token);
  while (true) {
    const std::int32_t id = sampler.sample({logits.data(), static_cast<std::size_t>(logits.cols())});
    out.push_back(id);
    const bool more = on_token ? on_token(id) : true;
    const bool stop = std::find(options.stop_ids.begin(), options.stop_ids.end(), id) != options.stop_ids.end();
    if (!more || stop || static_cast<std::int64_t>(out.size()) >= options.max_new_tokens) break;
    logits = model.forward(std::span(&out.back(), 1), cache, LogitsFor::last_token);
  }
  return out;
}

}  // namespace moonlight
