// moonlight/layers/embedding.hpp: the token embedding (no scaling, docs/moonlight-architecture.md
// §3.1), forward and backward.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

#include "moonlight/layers/linear.hpp"
#include "muon/error.hpp"

namespace moonlight::layers {

template <class S>
struct Embedding {
  Weight<S> table;  // [vocab, hidden]

  // Throws muon::InvalidArgument naming the first id outside the vocabulary; `what` names the ids.
  void check(std::span<const std::int32_t> ids, const char* what) const {
    for (std::size_t t = 0; t < ids.size(); ++t)
      if (ids[t] < 0 || ids[t] >= table.rows)
        throw muon::InvalidArgument(std::string(what) + " token id " + std::to_string(ids[t]) + " at index " +
                                    std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(table.rows) + ")");
  }

  Mat<S> forward(std::span<const std::int32_t> ids) const {
    Mat<S> h(static_cast<std::int64_t>(ids.size()), table.cols);
    for (std::size_t t = 0; t < ids.size(); ++t) {
      S* row = h.data() + static_cast<std::int64_t>(t) * table.cols;
      if constexpr (std::is_same_v<S, float>) {
        if (table.stored.data != nullptr) {
          widen_rows(table.stored, ids[t], 1, row);
          continue;
        }
      }
      std::copy_n(table.value + static_cast<std::int64_t>(ids[t]) * table.cols, table.cols, row);
    }
    return h;
  }

  void backward(std::span<const std::int32_t> ids, const Mat<S>& dh) const {
    auto g = table.g();
    for (std::size_t t = 0; t < ids.size(); ++t) g.row(ids[t]) += dh.row(static_cast<std::int64_t>(t));
  }
};

}  // namespace moonlight::layers
