// moonlight/bpe.hpp: tiktoken's byte-pair merge of one pre-tokenised piece.
//
// A piece that is itself a token becomes that token. Otherwise the piece starts as single bytes,
// and the adjacent pair whose concatenation has the lowest rank is merged, again and again, the
// leftmost pair first among equal ranks, until no adjacent pair is a token. This is tiktoken's
// `byte_pair_encode` (src/lib.rs) result for result. tiktoken rescans all pairs after each merge,
// which is quadratic in the piece length; here a heap of candidate pairs makes it O(n log n), so
// a piece of 100,000 spaces costs no more than it should.
//
//   moonlight::RankMap ranks = ...;             // token bytes -> rank
//   moonlight::BpeScratch scratch;              // reused across pieces
//   std::vector<std::int32_t> ids;
//   moonlight::encode_piece("hello", ranks, ids, scratch);
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moonlight {

using Rank = std::int32_t;

// Hashes std::string and std::string_view alike, so a RankMap is searched without copying.
struct BytesHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view bytes) const noexcept {
    return std::hash<std::string_view>{}(bytes);
  }
};

// Token bytes -> rank. Must hold every single byte (byte-level BPE falls back to them).
using RankMap = std::unordered_map<std::string, Rank, BytesHash, std::equal_to<>>;

// Working memory of encode_piece, kept between calls to avoid reallocating for each piece.
struct BpeScratch {
  struct Candidate {
    Rank rank;
    std::uint32_t node;  // the pair's left part, named by its first byte's offset in the piece
  };
  std::vector<std::uint32_t> next;  // offset of the part after part i (piece size at the end)
  std::vector<std::uint32_t> prev;  // offset of the part before part i (none: no_part)
  std::vector<Rank> pair_rank;      // rank of part i joined with its successor, or no_rank
  std::vector<Candidate> heap;
};

inline constexpr Rank no_rank = std::numeric_limits<Rank>::max();

// Appends the tokens of `piece` to `out`. Every byte of `piece` must be a token of `ranks`.
inline void encode_piece(std::string_view piece, const RankMap& ranks, std::vector<Rank>& out,
                         BpeScratch& scratch) {
  if (const auto whole = ranks.find(piece); whole != ranks.end()) {
    out.push_back(whole->second);
    return;
  }
  const auto n = static_cast<std::uint32_t>(piece.size());
  constexpr std::uint32_t no_part = std::numeric_limits<std::uint32_t>::max();
  // References, not a structured binding: clang 14 cannot capture bindings in the lambdas below.
  auto& next = scratch.next;
  auto& prev = scratch.prev;
  auto& pair_rank = scratch.pair_rank;
  auto& heap = scratch.heap;
  const auto rank_of = [&](std::uint32_t begin, std::uint32_t end) {
    const auto it = ranks.find(piece.substr(begin, end - begin));
    return it == ranks.end() ? no_rank : it->second;
  };
  // A part's pair ends where the part after its successor starts.
  const auto joined_rank = [&](std::uint32_t part) {
    return next[part] < n ? rank_of(part, next[next[part]]) : no_rank;
  };
  // Min-heap on (rank, offset): the lowest rank first, then the leftmost pair, as tiktoken does.
  const auto later = [](const BpeScratch::Candidate& a, const BpeScratch::Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.node > b.node;
  };
  const auto push = [&](std::uint32_t part) {
    if (pair_rank[part] == no_rank) return;
    heap.push_back({pair_rank[part], part});
    std::push_heap(heap.begin(), heap.end(), later);
  };

  next.resize(n);
  prev.resize(n);
  pair_rank.resize(n);
  heap.clear();
  for (std::uint32_t i = 0; i < n; ++i) {
    next[i] = i + 1;
    prev[i] = i == 0 ? no_part : i - 1;
  }
  for (std::uint32_t i = 0; i < n; ++i) {
    pair_rank[i] = joined_rank(i);
    if (pair_rank[i] != no_rank) heap.push_back({pair_rank[i], i});
  }
  std::make_heap(heap.begin(), heap.end(), later);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const BpeScratch::Candidate top = heap.back();
    heap.pop_back();
    // A stale candidate: its part was merged away or has grown since. A grown part's pair spans
    // other bytes, so it has another rank (ranks name distinct byte strings).
    if (pair_rank[top.node] != top.rank) continue;
    const std::uint32_t left = top.node;
    const std::uint32_t right = next[left];
    next[left] = next[right];
    if (next[right] < n) prev[next[right]] = left;
    pair_rank[right] = no_rank;
    pair_rank[left] = joined_rank(left);
    push(left);
    if (prev[left] != no_part) {
      pair_rank[prev[left]] = joined_rank(prev[left]);
      push(prev[left]);
    }
  }
  for (std::uint32_t part = 0; part < n; part = next[part]) {
    out.push_back(ranks.find(piece.substr(part, next[part] - part))->second);
  }
}

}  // namespace moonlight
