// muon/distributed/nccl.hpp: the communicator for GPU ranks, on NCCL. One rank per GPU.
//
// Bulk buffers are device memory. The caller's stream (the CUDA backend's: the compute stream)
// produces and consumes them; every NCCL call runs on the communicator's own stream, joined to
// the compute stream by events, and returns at once:
//   - a bulk collective (reduce_scatter, all_gather) waits on the compute stream's work so far,
//     runs on the communication stream, and its Request's `wait` makes the compute stream wait for
//     it (cudaStreamWaitEvent: the host never blocks). Between the two, the compute stream goes on,
//     so one bucket's all-gather overlaps the next bucket's Newton–Schulz (docs/zero1.md);
//   - device all_reduce and broadcast are joined back at once: stream order as before.
// One stream for every NCCL call keeps them in one order on every rank, which NCCL requires.
// The control values (norms, flags, hashes: a few numbers per step) live on the host and go
// through a small device scratch buffer with one stream synchronisation; so do broadcasts of host
// bytes. `reduce_to_host` lets the compute stream write that buffer itself: the gradients' sums
// of squares go from the kernels through the all-reduce to the host with one wait. Unequal blocks
// use grouped ncclReduce / ncclBroadcast (one launch per group). Under
// stream capture the events make the fork and the join a CUDA graph needs.
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
#include <utility>
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

// A CUDA event without timing (cheaper to record), destroyed with its owner. Destroying an event
// whose work is pending is allowed: CUDA releases it when the work completes.
class StreamEvent {
 public:
  StreamEvent() { cuda_check(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
  StreamEvent(StreamEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  StreamEvent& operator=(StreamEvent&& other) noexcept {
    std::swap(event_, other.event_);
    return *this;
  }
  StreamEvent(const StreamEvent&) = delete;
  StreamEvent& operator=(const StreamEvent&) = delete;
  ~StreamEvent() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  // `waiter` runs nothing enqueued after this call until `producer`'s work so far is done.
  static void join(cudaStream_t producer, cudaStream_t waiter) {
    StreamEvent e;
    e.record(producer);
    e.make_wait(waiter);
  }
  void record(cudaStream_t stream) { cuda_check(cudaEventRecord(event_, stream)); }
  void make_wait(cudaStream_t stream) const { cuda_check(cudaStreamWaitEvent(stream, event_, 0)); }

 private:
  cudaEvent_t event_ = nullptr;
};

class NcclCommunicator {
 public:
  // A bulk collective in flight on the communication stream; `wait` orders the compute stream
  // after it without blocking the host.
  class Request {
   public:
    Request() = default;
    Request(StreamEvent done, cudaStream_t compute) : done_(std::move(done)), compute_(compute) {}
    void wait() {
      if (compute_ != nullptr) done_.make_wait(compute_);
      compute_ = nullptr;
    }

   private:
    StreamEvent done_;
    cudaStream_t compute_ = nullptr;
  };

  // Joins rank `rank` of `size` on the unique id rank 0 made; the current CUDA device is this
  // rank's GPU. `stream` is the compute stream (run the CUDA backend on it); it must outlive the
  // communicator, which makes its own communication stream.
  NcclCommunicator(const ncclUniqueId& id, int rank, int size, cudaStream_t stream) : stream_(stream) {
    cudaStream_t comm_stream = nullptr;
    cuda_check(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
    ncclComm_t comm = nullptr;
    const ncclResult_t joined = ncclCommInitRank(&comm, size, id, rank);
    if (joined != ncclSuccess) cudaStreamDestroy(comm_stream);
    cuda_check(joined);
    state_ = std::shared_ptr<State>(new State{comm, comm_stream, nullptr, 0}, [](State* s) {
      if (s->scratch) cudaFree(s->scratch);
      ncclCommDestroy(s->comm);
      cudaStreamDestroy(s->comm_stream);
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
  [[nodiscard]] cudaStream_t communication_stream() const { return state_->comm_stream; }
  [[nodiscard]] ncclComm_t native() const { return state_->comm; }

  Request reduce_scatter(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts,
                         ReduceOp op) {
    const auto displacements = check_layout(counts, send.size(), recv.size(), "reduce_scatter");
    return in_flight([&](cudaStream_t comm_stream) {
      if (std::all_of(counts.begin(), counts.end(), [&](std::int64_t n) { return n == counts[0]; })) {
        cuda_check(ncclReduceScatter(send.data(), recv.data(), static_cast<std::size_t>(counts[0]), ncclFloat32,
                                     detail::nccl_op(op), native(), comm_stream));
        return;
      }
      detail::per_root_group(counts, displacements, [&](int root, std::size_t offset, std::size_t count) {
        return ncclReduce(send.data() + offset, root == rank_ ? recv.data() : nullptr, count, ncclFloat32,
                          detail::nccl_op(op), root, native(), comm_stream);
      });
    });
  }

  Request all_gather(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts) {
    const auto displacements = check_layout(counts, recv.size(), send.size(), "all_gather");
    return in_flight([&](cudaStream_t comm_stream) {
      if (std::all_of(counts.begin(), counts.end(), [&](std::int64_t n) { return n == counts[0]; })) {
        cuda_check(ncclAllGather(send.data(), recv.data(), static_cast<std::size_t>(counts[0]), ncclFloat32, native(),
                                 comm_stream));
        return;
      }
      detail::per_root_group(counts, displacements, [&](int root, std::size_t offset, std::size_t count) {
        return ncclBroadcast(root == rank_ ? send.data() : nullptr, recv.data() + offset, count, ncclFloat32, root,
                             native(), comm_stream);
      });
    });
  }

  // Device floats in place; host doubles and integers through the scratch buffer.
  template <class T>
  void all_reduce(std::span<T> data, ReduceOp op) {
    if constexpr (std::is_same_v<T, float>) {
      in_flight([&](cudaStream_t comm_stream) {
        cuda_check(ncclAllReduce(data.data(), data.data(), data.size(), ncclFloat32, detail::nccl_op(op), native(),
                                 comm_stream));
      }).wait();
    } else {
      if (op == ReduceOp::avg && !std::is_floating_point_v<T>) throw CommError("all_reduce: avg needs a floating-point buffer");
      through_device(data, [&](void* device, cudaStream_t comm_stream) {
        cuda_check(ncclAllReduce(device, device, data.size(), detail::nccl_type<T>(), detail::nccl_op(op), native(),
                                 comm_stream));
      });
    }
  }

  // `fill` writes the values into the device scratch on the compute stream; the all-reduce and the
  // copy to the host follow on the communication stream, and the host waits once.
  template <class Fill>
  void reduce_to_host(std::span<double> result, ReduceOp op, Fill&& fill) {
    if (result.empty()) return;
    auto* scratch = static_cast<double*>(scratch_of(result.size_bytes()));
    fill(std::span<double>(scratch, result.size()));
    const cudaStream_t comm_stream = state_->comm_stream;
    StreamEvent::join(stream_, comm_stream);
    cuda_check(ncclAllReduce(scratch, scratch, result.size(), ncclFloat64, detail::nccl_op(op), native(), comm_stream));
    copy_back(result.data(), result.size_bytes());
  }

  template <class T>
  void broadcast(std::span<T> data, int root) {
    if constexpr (std::is_same_v<T, float>) {
      in_flight([&](cudaStream_t comm_stream) {
        cuda_check(ncclBroadcast(data.data(), data.data(), data.size(), ncclFloat32, root, native(), comm_stream));
      }).wait();
    } else {
      through_device(data, [&](void* device, cudaStream_t comm_stream) {
        cuda_check(ncclBroadcast(device, device, data.size(), detail::nccl_type<T>(), root, native(), comm_stream));
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
    cudaStream_t comm_stream;
    void* scratch;
    std::size_t scratch_bytes;
  };

  // Runs `enqueue(communication stream)` after the compute stream's work so far; the Request
  // joins it back.
  template <class F>
  Request in_flight(F&& enqueue) {
    const cudaStream_t comm_stream = state_->comm_stream;
    StreamEvent::join(stream_, comm_stream);
    enqueue(comm_stream);
    StreamEvent done;
    done.record(comm_stream);
    return Request(std::move(done), stream_);
  }

  // Copies host data to the device scratch, runs `collective` on it on the communication stream,
  // copies it back, and waits: the one host synchronisation, for control values only.
  template <class T, class F>
  void through_device(std::span<T> data, F&& collective) {
    const std::size_t bytes = data.size_bytes();
    if (bytes == 0) return;
    void* scratch = scratch_of(bytes);
    const cudaStream_t comm_stream = state_->comm_stream;
    StreamEvent::join(stream_, comm_stream);  // after the compute stream's work so far, as every call here
    cuda_check(cudaMemcpyAsync(scratch, data.data(), bytes, cudaMemcpyHostToDevice, comm_stream));
    collective(scratch, comm_stream);
    copy_back(data.data(), bytes);
  }

  // The device scratch, at least `bytes` long. A smaller one is freed: its users waited for their
  // work (copy_back), and cudaFree waits for the device in any case.
  void* scratch_of(std::size_t bytes) {
    if (state_->scratch_bytes < bytes) {
      if (state_->scratch) cuda_check(cudaFree(state_->scratch));
      state_->scratch = nullptr;
      state_->scratch_bytes = 0;
      cuda_check(cudaMalloc(&state_->scratch, bytes));
      state_->scratch_bytes = bytes;
    }
    return state_->scratch;
  }
  void copy_back(void* host, std::size_t bytes) {
    const cudaStream_t comm_stream = state_->comm_stream;
    cuda_check(cudaMemcpyAsync(host, state_->scratch, bytes, cudaMemcpyDeviceToHost, comm_stream));
    cuda_check(cudaStreamSynchronize(comm_stream));
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
