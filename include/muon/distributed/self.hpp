// muon/distributed/self.hpp: the one-rank communicator. Every collective is a copy (or nothing), so the
// ZeRO-1 layer runs unchanged in a single process, on host memory.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "muon/distributed/communicator.hpp"

namespace muon::distributed {

class SelfCommunicator {
 public:
  struct Request {
    void wait() {}
  };

  [[nodiscard]] int rank() const { return 0; }
  [[nodiscard]] int size() const { return 1; }

  Request reduce_scatter(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts,
                         ReduceOp) {
    copy(send, recv, counts);
    return {};
  }
  Request all_gather(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts) {
    copy(send, recv, counts);
    return {};
  }
  template <class T>
  void all_reduce(std::span<T>, ReduceOp) {}
  template <class Fill>
  void reduce_to_host(std::span<double> result, ReduceOp, Fill&& fill) {
    fill(result);
  }
  template <class T>
  void broadcast(std::span<T>, int root) {
    if (root != 0) throw CommError("broadcast: root " + std::to_string(root) + " is not a rank of a 1-rank group");
  }
  void barrier() {}

 private:
  static void copy(std::span<const float> from, std::span<float> to, std::span<const std::int64_t> counts) {
    if (counts.size() != 1 || from.size() != static_cast<std::size_t>(counts[0]) || to.size() != from.size())
      throw CommError("a 1-rank collective needs one count equal to both buffer sizes");
    if (from.data() != to.data()) std::copy(from.begin(), from.end(), to.begin());
  }
};

static_assert(Communicator<SelfCommunicator>);

}  // namespace muon::distributed
