// moonlight/bpe_trainer.hpp: train a byte-level BPE vocabulary in tiktoken's rank-file form.
//
// Ranks 0..255 are the single bytes (rank b = byte b). The corpus is cut into pieces with
// Moonlight's pre-tokenisation regex (moonlight/pretokenizer.hpp), as the tokenizer will cut it,
// and identical pieces are counted once with their frequency. Then, until the vocabulary has
// `vocab_size` tokens, the most frequent adjacent pair of tokens over all pieces is merged into
// a new token with the next rank. Ties go to the pair with the smaller (left rank, right rank),
// so training is deterministic: the same corpus gives the same file on every machine. If a
// merge's bytes are already a token (two different pairs can spell the same bytes), the pair
// becomes that token and no rank is added, keeping the file free of duplicates.
//
//   std::vector<std::string> tokens = moonlight::train_bpe(documents, 8192);
//   moonlight::write_rank_file("fortunes.tiktoken", tokens);
//
// Each merge only revisits the pieces that hold the pair (an index from pair to pieces) and a
// heap of pair counts finds the next pair, so a few MB of text train in seconds.
#pragma once

#include <algorithm>
#include <cstdint>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <muon/error.hpp>

#include "moonlight/bpe.hpp"
#include "moonlight/pretokenizer.hpp"

namespace moonlight {

namespace detail {

using PairKey = std::uint64_t;

inline PairKey pair_key(Rank left, Rank right) {
  return static_cast<PairKey>(static_cast<std::uint32_t>(left)) << 32 | static_cast<std::uint32_t>(right);
}

struct PairCount {
  std::int64_t count;
  PairKey pair;
  // The heap's top is the largest count, then the smallest pair.
  friend bool operator<(const PairCount& a, const PairCount& b) {
    return a.count != b.count ? a.count < b.count : a.pair > b.pair;
  }
};

struct TrainingWord {
  std::vector<Rank> symbols;
  std::int64_t count;
};

}  // namespace detail

// Returns the tokens by rank: 256 single bytes, then up to vocab_size - 256 merges (fewer if the
// corpus runs out of pairs). Each document is pre-tokenised on its own. Throws
// muon::InvalidArgument if vocab_size < 256.
inline std::vector<std::string> train_bpe(std::span<const std::string_view> documents, std::int32_t vocab_size) {
  using detail::PairCount;
  using detail::PairKey;
  if (vocab_size < 256) {
    throw muon::InvalidArgument("train_bpe: vocab_size is " + std::to_string(vocab_size) +
                                "; it must be at least 256 (the single bytes)");
  }
  std::vector<std::string> tokens;
  RankMap rank_of;
  for (int byte = 0; byte < 256; ++byte) {
    tokens.emplace_back(1, static_cast<char>(byte));
    rank_of.emplace(tokens.back(), byte);
  }

  std::unordered_map<std::string_view, std::int64_t> piece_counts;
  const Pretokenizer pretokenizer;
  for (const std::string_view document : documents) {
    pretokenizer.for_each_piece(document, [&](std::string_view piece) { ++piece_counts[piece]; });
  }
  std::vector<detail::TrainingWord> words;
  words.reserve(piece_counts.size());
  for (const auto& [piece, count] : piece_counts) {
    detail::TrainingWord word{{}, count};
    for (const char c : piece) word.symbols.push_back(static_cast<unsigned char>(c));
    words.push_back(std::move(word));
  }

  std::unordered_map<PairKey, std::int64_t> pair_counts;
  std::unordered_map<PairKey, std::vector<std::uint32_t>> words_with_pair;  // may hold stale entries
  for (std::uint32_t w = 0; w < words.size(); ++w) {
    const std::vector<Rank>& s = words[w].symbols;
    for (std::size_t k = 0; k + 1 < s.size(); ++k) {
      const PairKey key = detail::pair_key(s[k], s[k + 1]);
      pair_counts[key] += words[w].count;
      std::vector<std::uint32_t>& list = words_with_pair[key];
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  }
  // Lazy heap: a count change pushes a new entry; entries whose count is no longer current are
  // dropped when they surface.
  std::priority_queue<PairCount> heap;
  for (const auto& [key, count] : pair_counts) heap.push({count, key});

  std::vector<std::uint32_t> visited(words.size(), 0);  // merge step that last rewrote the word
  std::vector<PairKey> changed;
  std::vector<Rank> merged;
  for (std::uint32_t step = 1; static_cast<std::int32_t>(tokens.size()) < vocab_size && !heap.empty(); ++step) {
    const PairCount top = heap.top();
    heap.pop();
    const auto current = pair_counts.find(top.pair);
    if (current == pair_counts.end() || current->second != top.count || top.count <= 0) continue;

    const auto left = static_cast<Rank>(top.pair >> 32);
    const auto right = static_cast<Rank>(top.pair & 0xFFFFFFFFu);
    std::string bytes = tokens[static_cast<std::size_t>(left)] + tokens[static_cast<std::size_t>(right)];
    Rank joined = 0;
    if (const auto existing = rank_of.find(bytes); existing != rank_of.end()) {
      joined = existing->second;
    } else {
      joined = static_cast<Rank>(tokens.size());
      rank_of.emplace(bytes, joined);
      tokens.push_back(std::move(bytes));
    }

    changed.clear();
    const auto add = [&](Rank a, Rank b, std::int64_t delta, std::uint32_t w) {
      const PairKey key = detail::pair_key(a, b);
      pair_counts[key] += delta;
      changed.push_back(key);
      if (delta > 0) words_with_pair[key].push_back(w);
    };
    // Moved out: add() may insert into words_with_pair and invalidate a reference into it.
    const std::vector<std::uint32_t> holders = std::move(words_with_pair[top.pair]);
    words_with_pair.erase(top.pair);
    for (const std::uint32_t w : holders) {
      if (visited[w] == step) continue;
      visited[w] = step;
      std::vector<Rank>& s = words[w].symbols;
      const std::int64_t count = words[w].count;
      merged.clear();
      // Left to right, non-overlapping: in "a a a", (a, a) merges the first two. Each merge
      // replaces the pairs it touches: (x, a) -> (x, joined), (a, b) -> gone, (b, y) -> (joined, y);
      // x is read from the merged output, so back-to-back merges see each other.
      for (std::size_t k = 0; k < s.size();) {
        if (k + 1 < s.size() && s[k] == left && s[k + 1] == right) {
          if (!merged.empty()) {
            add(merged.back(), left, -count, w);
            add(merged.back(), joined, count, w);
          }
          add(left, right, -count, w);
          if (k + 2 < s.size()) {
            add(right, s[k + 2], -count, w);
            add(joined, s[k + 2], count, w);
          }
          merged.push_back(joined);
          k += 2;
        } else {
          merged.push_back(s[k]);
          ++k;
        }
      }
      s.swap(merged);
    }
    std::sort(changed.begin(), changed.end());
    changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
    for (const PairKey key : changed) {
      const auto it = pair_counts.find(key);
      if (it->second > 0) {
        heap.push({it->second, key});
      } else {
        pair_counts.erase(it);
      }
    }
  }
  return tokens;
}

}  // namespace moonlight
