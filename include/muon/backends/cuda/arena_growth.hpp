// muon/backends/cuda/arena_growth.hpp: how far the CUDA backend's scratch arena grows.
//
// Plain C++ (no CUDA), so the policy is tested on machines without a GPU or nvcc
// (tests/test_cuda_arena_growth.cpp). The arena itself is muon/backends/cuda/arena.hpp.
//
//   grown_arena_bytes(0, 1000)        == 1 MiB      (one granule)
//   grown_arena_bytes(8 MiB, 9 MiB)   == 12 MiB     (×1.5, not the request)
//   grown_arena_bytes(8 MiB, 100 MiB) == 100 MiB    (a request beyond ×1.5 is taken as it is)
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>

namespace muon::detail {

// Arena sizes are whole granules: 1 MiB, far above the 256-byte alignment the pieces need and
// small against the operand copies of one Newton–Schulz call.
inline constexpr std::size_t kArenaGranule = std::size_t{1} << 20;

// The size an arena of `current` bytes grows to for a request of `request` bytes: `current` if it
// fits; else the larger of the request and 1.5·current, rounded up to a granule. Growing by a
// factor bounds the reallocations of a sequence of rising requests to O(log(largest/first)), each
// of which retires an arena; 1.5 rather than 2 keeps the slack at most half the arena, which
// matters when the arena holds the bf16 copies of a 64-expert stack (about 1 GiB).
[[nodiscard]] constexpr std::size_t grown_arena_bytes(std::size_t current, std::size_t request) noexcept {
  if (request <= current) return current;
  constexpr std::size_t most = std::numeric_limits<std::size_t>::max();
  const std::size_t geometric = current > most / 3 * 2 ? request : current + current / 2;
  const std::size_t want = std::max(request, geometric);
  if (want > most - kArenaGranule) return want;
  return (want + kArenaGranule - 1) / kArenaGranule * kArenaGranule;
}

}  // namespace muon::detail
