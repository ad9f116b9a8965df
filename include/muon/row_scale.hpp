// muon/row_scale.hpp: multiply blocks of rows of a row-major parameter by per-block factors, in
// any backend's memory.
//
// For weight surgery between optimizer steps that acts on slices of a matrix rather than on the
// whole of it: QK-clip (Kimi K2's MuonClip) rescales the query and key rows of single attention
// heads. Each block is one `axpby(f, rows, 0, rows)` of the backend (β = 0 does not read y, so
// the result is the single rounding f·x on every backend: Eigen, CUDA, LibTorch, the toy one);
// the seam needs no new operation. Rows outside every block are not touched, so they stay bit for
// bit what they were. Blocks may not overlap (each row is scaled once, by its block's factor).
//
//   const muon::RowBlockScale blocks[] = {{.first_row = 0, .rows = 2, .factor = 0.5f}};
//   muon::scale_row_blocks(backend, weight_span, /*row_length=*/cols, blocks);
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "muon/backend.hpp"
#include "muon/error.hpp"

namespace muon {

// `rows` consecutive rows from `first_row` on, to be multiplied by `factor`.
struct RowBlockScale {
  std::int64_t first_row = 0;
  std::int64_t rows = 0;
  float factor = 1.0f;
};

// Checks `blocks` against a value of value_size elements in rows of row_length: each block inside
// the matrix, none overlapping another, every factor finite. Throws InvalidArgument or
// ShapeMismatch naming the block; nothing is changed.
inline void check_row_blocks(std::size_t value_size, std::int64_t row_length, std::span<const RowBlockScale> blocks) {
  if (row_length <= 0) throw InvalidArgument("scale_row_blocks: row_length must be positive, got " + std::to_string(row_length));
  if (value_size % static_cast<std::size_t>(row_length) != 0)
    throw ShapeMismatch("scale_row_blocks: the value has " + std::to_string(value_size) +
                        " elements, not a whole number of rows of " + std::to_string(row_length));
  const auto rows = static_cast<std::int64_t>(value_size) / row_length;
  std::vector<RowBlockScale> sorted(blocks.begin(), blocks.end());
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const RowBlockScale& b = blocks[i];
    const std::string which = "scale_row_blocks: block " + std::to_string(i);
    if (b.first_row < 0 || b.rows < 0 || b.first_row > rows - b.rows)
      throw ShapeMismatch(which + " (rows " + std::to_string(b.first_row) + " + " + std::to_string(b.rows) +
                          ") lies outside the value's " + std::to_string(rows) + " rows");
    if (!std::isfinite(b.factor)) throw InvalidArgument(which + " has a factor that is not finite");
  }
  std::ranges::sort(sorted, {}, &RowBlockScale::first_row);
  for (std::size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i].first_row < sorted[i - 1].first_row + sorted[i - 1].rows)
      throw InvalidArgument("scale_row_blocks: the blocks at rows " + std::to_string(sorted[i - 1].first_row) + " and " +
                            std::to_string(sorted[i].first_row) + " overlap; each row may be scaled once");
}

// value (row-major, rows of row_length floats, in `backend`'s memory): every block's rows ←
// factor · rows. A factor of exactly 1 is skipped (the rows would not change). Enqueued in the
// backend's order, as the backend's other operations.
template <Backend B>
void scale_row_blocks(B& backend, std::span<float> value, std::int64_t row_length, std::span<const RowBlockScale> blocks) {
  check_row_blocks(value.size(), row_length, blocks);
  for (const RowBlockScale& b : blocks) {
    if (b.factor == 1.0f || b.rows == 0) continue;
    const std::span<float> rows = value.subspan(static_cast<std::size_t>(b.first_row * row_length),
                                                static_cast<std::size_t>(b.rows * row_length));
    backend.axpby(b.factor, rows, 0.0f, rows);
  }
}

}  // namespace muon
