// The trainer tests' corpus: a learnable stream, a repeated random phrase of 40 tokens (ids below
// 290), so that a model that learns drives the loss far below ln(300) = 5.7.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "moonlight/corpus.hpp"

namespace moonlight::test {

inline PackedSequences phrase_data(std::int64_t seq_len) {
  TokenStream s;
  std::uint64_t x = 12345;
  std::vector<std::int32_t> phrase;
  for (int i = 0; i < 40; ++i) phrase.push_back(static_cast<std::int32_t>((x = x * 6364136223846793005ull + 1) >> 33) % 290);
  for (int r = 0; r < 60; ++r) s.tokens.insert(s.tokens.end(), phrase.begin(), phrase.end());
  s.source = "phrase";
  return {std::move(s), seq_len, 0.1};
}

}  // namespace moonlight::test
