// The CUDA backend's scratch-arena growth policy (muon/backends/cuda/arena_growth.hpp): plain
// C++, so it runs on every machine, GPU or not.
#include <doctest/doctest.h>

#include <cstddef>
#include <limits>
#include <muon/backends/cuda/arena_growth.hpp>

using muon::detail::grown_arena_bytes;
using muon::detail::kArenaGranule;

TEST_CASE("the scratch arena keeps its size while requests fit") {
  CHECK(grown_arena_bytes(0, 0) == 0);
  CHECK(grown_arena_bytes(8 * kArenaGranule, 1) == 8 * kArenaGranule);
  CHECK(grown_arena_bytes(8 * kArenaGranule, 8 * kArenaGranule) == 8 * kArenaGranule);
}

TEST_CASE("the scratch arena grows by 1.5 at least, in whole granules") {
  CHECK(grown_arena_bytes(0, 1000) == kArenaGranule);
  CHECK(grown_arena_bytes(8 * kArenaGranule, 8 * kArenaGranule + 1) == 12 * kArenaGranule);
  CHECK(grown_arena_bytes(8 * kArenaGranule, 100 * kArenaGranule) == 100 * kArenaGranule);
  CHECK(grown_arena_bytes(8 * kArenaGranule, 100 * kArenaGranule + 1) == 101 * kArenaGranule);
  // Rising requests one byte apart reallocate O(log) times, not once per request.
  std::size_t size = 0;
  int growths = 0;
  for (std::size_t request = 1; request <= 1024 * kArenaGranule; request += kArenaGranule / 4) {
    const std::size_t next = grown_arena_bytes(size, request);
    CHECK(next >= request);
    CHECK(next % kArenaGranule == 0);
    if (next != size) ++growths;
    size = next;
  }
  CHECK(growths <= 20);
}

TEST_CASE("the scratch arena's growth does not overflow") {
  constexpr std::size_t most = std::numeric_limits<std::size_t>::max();
  CHECK(grown_arena_bytes(most / 2, most / 2 + 1) >= most / 2 + 1);
  CHECK(grown_arena_bytes(most - 10, most - 5) == most - 5);
  CHECK(grown_arena_bytes(0, most) == most);
}
