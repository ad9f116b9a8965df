// muon/distributed/nccl.hpp: the communicator for GPU ranks, on NCCL. One rank per GPU.
//
// Bulk buffers are device memory; every collective is enqueued on the communicator's stream and
// returns at once. Run the CUDA backend on the same stream: stream order then does what a wait
// would, so `Request::wait` enqueues nothing and the host never blocks on the bulk collectives.
// The control values (norms, flags, hashes: a few numbers per step) live on the host and go
// through a small device scratch buffer with one stream synchronisation; so do broadcasts of host
// bytes. Unequal blocks use grouped ncclReduce / ncclBroadcast (one launch per group).
//
//   ncclUniqueId id;                       // rank 0: ncclGetUniqueId(&id); share it out of band
//   muon::distributed::NcclCommunicator comm(id, rank, world, stream);
//   // or, under mpirun: auto comm = muon::distributed::NcclCommunicator::from_mpi(MPI_COMM_WORLD, stream);
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <source_location>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "muon/cuda_check.hpp"
#include "muon/distributed/communicator.hpp"

#if defined(MUON_HAS_MPI)
#include <mpi.h>
#endif

template <>
struct muon::StatusTraits<ncclResult_t> {
  using Exception = distributed::CommError;  // the engine behind ZeRO-1 failed
  static constexpr const char* library = "NCCL";
  static bool ok(ncclResult_t s) { return s == ncclSuccess; }
  static std::string describe(ncclResult_t s) { return ncclGetErrorString(s); }
};

namespace muon::distributed {

namespace detail {


template <class T>
ncclDataType_t nccl_type() {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<T, std::int64_t>) return ncclInt64;
  else {
    static_assert(std::is_same_v<T, std::byte>, "NCCL communicator: float, double, int64 or byte buffers");
    return ncclUint8;
  }
}

inline ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::min: return ncclMin;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

// One call per rank with a non-empty block, `call(root, offset, count)`, between ncclGroupStart
// and ncclGroupEnd, so that they become one launch. The group is closed even when a call fails,
// and the first failure is thrown only after.
template <class F>
void per_root_group(std::span<const std::int64_t> counts, std::span<const std::size_t> displacements, F&& call,
                    std::source_location where = std::source_location::current()) {
  cuda_check(ncclGroupStart());
  ncclResult_t enqueued = ncclSuccess;
  for (std::size_t r = 0; r < counts.size() && enqueued == ncclSuccess; ++r)
    if (counts[r] != 0) enqueued = call(static_cast<int>(r), displacements[r], static_cast<std::size_t>(counts[r]));
  const ncclResult_t ended = ncclGroupEnd();
  cuda_check(enqueued, where);
  cuda_check(ended);
}

}  // namespace detail

class NcclCommunicator {
 public:
  // Stream-ordered: the work is already enqueued ahead of whatever the caller enqueues next.
  struct Request {
    void wait() {}
  };

  // Joins rank `rank` of `size` on the unique id rank 0 made; the current CUDA device is this
  // rank's GPU. `stream` must outlive the communicator.
  NcclCommunicator(const ncclUniqueId& id, int rank, int size, cudaStream_t stream) : stream_(stream) {
    ncclComm_t comm = nullptr;
    cuda_check(ncclCommInitRank(&comm, size, id, rank));
    state_ = std::shared_ptr<State>(new State{comm, nullptr, 0}, [](State* s) {
      if (s->scratch) cudaFree(s->scratch);
      ncclCommDestroy(s->comm);
      delete s;
    });
    rank_ = rank;
    size_ = size;
  }

#if defined(MUON_HAS_MPI)
  // Bootstraps through MPI: rank 0 makes the unique id and broadcasts it.
  static NcclCommunicator from_mpi(MPI_Comm comm, cudaStream_t stream) {
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    ncclUniqueId id{};
    if (rank == 0) cuda_check(ncclGetUniqueId(&id));
    if (MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm) != MPI_SUCCESS)
      throw CommError("MPI_Bcast of the NCCL unique id failed");
    return NcclCommunicator(id, rank, size, stream);
  }
#endif

  [[nodiscard]] int rank() const { return rank_; }
  [[nodiscard]] int size() const { return size_; }
  [[nodiscard]] cudaStream_t stream() const { return stream_; }
  [[nodiscard]] ncclComm_t native() const { return state_->comm; }

  Request reduce_scatter(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts,
                         ReduceOp op) {
    const auto displacements = check_layout(counts, send.size(), recv.size(), "reduce_scatter");
    if (std::all_of(counts.begin(), counts.end(), [&](std::int64_t n) { return n == counts[0]; })) {
      cuda_check(ncclReduceScatter(send.data(), recv.data(), static_cast<std::size_t>(counts[0]), ncclFloat32,
                                   detail::nccl_op(op), native(), stream_));
      return {};
    }
    detail::per_root_group(
        counts, displacements,
        [&](int root, std::size_t offset, std::size_t count) {
          return ncclReduce(send.data() + offset, root == rank_ ? recv.data() : nullptr, count, ncclFloat32,
                            detail::nccl_op(op), root, native(), stream_);
        });
    return {};
  }

  Request all_gather(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts) {
    const auto displacements = check_layout(counts, recv.size(), send.size(), "all_gather");
    if (std::all_of(counts.begin(), counts.end(), [&](std::int64_t n) { return n == counts[0]; })) {
      cuda_check(ncclAllGather(send.data(), recv.data(), static_cast<std::size_t>(counts[0]), ncclFloat32, native(),
                               stream_));
      return {};
    }
    detail::per_root_group(
        counts, displacements,
        [&](int root, std::size_t offset, std::size_t count) {
          return ncclBroadcast(root == rank_ ? send.data() : nullptr, recv.data() + offset, count, ncclFloat32, root,
                               native(), stream_);
        });
    return {};
  }

  // Device floats in place; host doubles and integers through the scratch buffer.
  template <class T>
  void all_reduce(std::span<T> data, ReduceOp op) {
    if constexpr (std::is_same_v<T, float>) {
      cuda_check(ncclAllReduce(data.data(), data.data(), data.size(), ncclFloat32, detail::nccl_op(op), native(),
                               stream_));
    } else {
      if (op == ReduceOp::avg && !std::is_floating_point_v<T>) throw CommError("all_reduce: avg needs a floating-point buffer");
      through_device(data, [&](void* device) {
        cuda_check(ncclAllReduce(device, device, data.size(), detail::nccl_type<T>(), detail::nccl_op(op), native(),
                                 stream_));
      });
    }
  }

  template <class T>
  void broadcast(std::span<T> data, int root) {
    if constexpr (std::is_same_v<T, float>) {
      cuda_check(ncclBroadcast(data.data(), data.data(), data.size(), ncclFloat32, root, native(), stream_));
    } else {
      through_device(data, [&](void* device) {
        cuda_check(ncclBroadcast(device, device, data.size(), detail::nccl_type<T>(), root, native(), stream_));
      });
    }
  }

  void barrier() {
    std::int64_t token[] = {0};
    all_reduce(std::span<std::int64_t>(token), ReduceOp::sum);
  }

 private:
  struct State {
    ncclComm_t comm;
    void* scratch;
    std::size_t scratch_bytes;
  };

  // Copies host data to the device scratch, runs `collective` on it there, copies it back, and
  // waits for the stream: the one host synchronisation, for control values only.
  template <class T, class F>
  void through_device(std::span<T> data, F&& collective) {
    const std::size_t bytes = data.size_bytes();
    if (bytes == 0) return;
    if (state_->scratch_bytes < bytes) {
      if (state_->scratch) cuda_check(cudaFree(state_->scratch));
      state_->scratch = nullptr;
      state_->scratch_bytes = 0;
      cuda_check(cudaMalloc(&state_->scratch, bytes));
      state_->scratch_bytes = bytes;
    }
    cuda_check(cudaMemcpyAsync(state_->scratch, data.data(), bytes, cudaMemcpyHostToDevice, stream_));
    collective(state_->scratch);
    cuda_check(cudaMemcpyAsync(data.data(), state_->scratch, bytes, cudaMemcpyDeviceToHost, stream_));
    cuda_check(cudaStreamSynchronize(stream_));
  }

  std::vector<std::size_t> check_layout(std::span<const std::int64_t> counts, std::size_t full, std::size_t own,
                                        const char* what) const {
    if (std::ssize(counts) != size_)
      throw CommError(std::string("NCCL ") + what + ": " + std::to_string(counts.size()) + " counts for " +
                      std::to_string(size_) + " ranks");
    std::vector<std::size_t> displacements;
    std::size_t total = 0;
    for (const std::int64_t n : counts) {
      if (n < 0) throw CommError(std::string("NCCL ") + what + ": a negative count");
      displacements.push_back(total);
      total += static_cast<std::size_t>(n);
    }
    if (total != full || static_cast<std::size_t>(counts[static_cast<std::size_t>(rank_)]) != own)
      throw CommError(std::string("NCCL ") + what + ": buffer sizes " + std::to_string(full) + " and " +
                      std::to_string(own) + " do not match the counts (total " + std::to_string(total) + ")");
    return displacements;
  }

  std::shared_ptr<State> state_;
  cudaStream_t stream_ = nullptr;
  int rank_ = 0;
  int size_ = 1;
};

static_assert(Communicator<NcclCommunicator>);

}  // namespace muon::distributed
