// muon::scale_row_blocks (muon/row_scale.hpp) on the toy backend and the Eigen backend: the rows
// of each block become factor·x exactly (one float multiply), every other row keeps its bits, and
// bad blocks throw before anything changes. The CUDA backend's case is in test_cuda.cu.
#include <doctest/doctest.h>

#include <cstring>
#include <limits>
#include <muon/muon.hpp>
#include <vector>

#include "hybrid_model.hpp"
#include "toy_backend.hpp"

#ifdef MUON_HAS_EIGEN
#include <muon/backends/eigen.hpp>
#endif

namespace {

using muon::RowBlockScale;

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// A 12×5 matrix with three blocks: rows 1–2 by 0.5, rows 4–6 by an inexact factor, row 11 by 3.
template <class B>
void check_blocks(B& backend) {
  constexpr std::int64_t cols = 5, rows = 12;
  const std::vector<float> before = muon::test::lcg_values(static_cast<std::size_t>(rows * cols), 7);
  std::vector<float> value = before;
  const float odd = 0.7310586f;
  const RowBlockScale blocks[] = {{.first_row = 4, .rows = 3, .factor = odd},
                                  {.first_row = 1, .rows = 2, .factor = 0.5f},
                                  {.first_row = 11, .rows = 1, .factor = 3.0f}};
  muon::scale_row_blocks(backend, std::span<float>(value), cols, blocks);
  for (std::int64_t r = 0; r < rows; ++r) {
    float factor = 1.0f;
    for (const RowBlockScale& b : blocks)
      if (r >= b.first_row && r < b.first_row + b.rows) factor = b.factor;
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto k = static_cast<std::size_t>(r * cols + c);
      const float expected = factor == 1.0f ? before[k] : factor * before[k];
      INFO("row " << r << ", column " << c);
      CHECK(same_bits(value[k], expected));
    }
  }
}

}  // namespace

TEST_CASE("scale_row_blocks scales exactly the blocks' rows on the toy backend") {
  muon::test::ToyBackend toy;
  check_blocks(toy);
}

#ifdef MUON_HAS_EIGEN
TEST_CASE("scale_row_blocks scales exactly the blocks' rows on the Eigen backend") {
  muon::EigenBackend eigen;
  check_blocks(eigen);
}
#endif

TEST_CASE("scale_row_blocks rejects bad blocks and changes nothing") {
  muon::test::ToyBackend toy;
  std::vector<float> value = muon::test::lcg_values(12, 3);
  const std::vector<float> before = value;
  const auto bad = [&](std::int64_t row_length, std::vector<RowBlockScale> blocks) {
    muon::scale_row_blocks(toy, std::span<float>(value), row_length, blocks);
  };
  CHECK_THROWS_AS(bad(0, {}), muon::InvalidArgument);
  CHECK_THROWS_AS(bad(5, {}), muon::ShapeMismatch);  // 12 is not a whole number of rows of 5
  CHECK_THROWS_AS(bad(4, {{.first_row = 2, .rows = 2, .factor = 0.5f}}), muon::ShapeMismatch);
  CHECK_THROWS_AS(bad(4, {{.first_row = -1, .rows = 1, .factor = 0.5f}}), muon::ShapeMismatch);
  CHECK_THROWS_AS(bad(4, {{.first_row = 0, .rows = 2, .factor = 0.5f}, {.first_row = 1, .rows = 1, .factor = 2.0f}}),
                  muon::InvalidArgument);
  CHECK_THROWS_AS(bad(4, {{.first_row = 0, .rows = 1, .factor = std::numeric_limits<float>::infinity()}}),
                  muon::InvalidArgument);
  CHECK(value == before);
}
