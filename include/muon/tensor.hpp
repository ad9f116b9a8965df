// muon/tensor.hpp: non-owning views of the memory the optimizer works on.
//
// The optimizer never owns a model's memory: parameters and gradients are described by
// `TensorRef`s (pointer + shape) into whatever memory space the backend works in (host memory
// for the Eigen backend, device memory for CUDA). `MatrixStack` is the view the backend's
// matrix operations take: `batch` row-major rows×cols matrices stored back to back, so a 3-D
// expert tensor [E, rows, cols] is a stack of E matrices and a 2-D weight is a stack of one.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace muon {

using Shape = std::vector<std::int64_t>;

[[nodiscard]] inline std::int64_t numel(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>{});
}

// The element count of a shape with non-negative dims, or nullopt when it exceeds int64 (where
// numel would overflow): check this before numel on any shape that came from outside.
[[nodiscard]] inline std::optional<std::int64_t> checked_numel(std::span<const std::int64_t> shape) {
  std::int64_t n = 1;
  for (const std::int64_t d : shape) {
    if (d < 0 || (d > 0 && n > std::numeric_limits<std::int64_t>::max() / d)) return std::nullopt;
    n *= d;
  }
  return n;
}

[[nodiscard]] inline std::string to_string(std::span<const std::int64_t> shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// A pointer and the shape of the row-major tensor behind it.
template <class T>
struct TensorRef {
  T* data = nullptr;
  Shape shape;

  [[nodiscard]] std::int64_t size() const { return numel(shape); }
  [[nodiscard]] std::span<T> span() const { return {data, static_cast<std::size_t>(size())}; }
};

// `batch` row-major rows×cols matrices, contiguous: element (k, i, j) is data[(k·rows + i)·cols + j].
template <class T>
struct MatrixStack {
  T* data = nullptr;
  std::int64_t batch = 1;
  std::int64_t rows = 0;
  std::int64_t cols = 0;

  [[nodiscard]] std::int64_t matrix_size() const { return rows * cols; }
  [[nodiscard]] std::int64_t size() const { return batch * rows * cols; }
  [[nodiscard]] T* matrix(std::int64_t k) const { return data + k * matrix_size(); }
  [[nodiscard]] std::span<T> span() const { return {data, static_cast<std::size_t>(size())}; }
  // A read-only view of the same memory.
  [[nodiscard]] MatrixStack<const T> as_const() const { return {data, batch, rows, cols}; }
};

}  // namespace muon
