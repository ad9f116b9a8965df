// muon/distributed/communicator.hpp: the seam between the ZeRO-1 layer and a distributed engine.
//
// The ZeRO-1 layer (zero1.hpp) talks to its ranks through the operations of
// `muon::distributed::Communicator`, on buffers in the engine's memory space: host memory for MPI
// (mpi.hpp), device memory for NCCL (nccl.hpp); self.hpp is the one-rank identity. The two bulk
// collectives take per-rank counts, because whole-matrix owners hold unequal shares; an engine
// uses its equal-block collective when the counts are equal. They return a `Request` so that the
// caller can overlap them with work; every other operation completes before it returns.
//
// Conventions every communicator keeps:
//   - every rank calls the same operations in the same order with the same counts;
//   - `ReduceOp::avg` is the mean (MPI: the sum times the float 1/size; NCCL: ncclAvg);
//   - all_gather is in place when `send` is the rank's own block of `recv`; reduce_scatter's
//     buffers do not overlap;
//   - an engine failure throws CommError (a device failure inside one, the device's error:
//     muon/cuda_check.hpp).
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "muon/error.hpp"

namespace muon::distributed {

enum class ReduceOp { sum, avg, min, max };

// The distributed engine failed, or the ranks disagree (tables, options, files). Thrown on every
// rank alike, so that no rank is left waiting in a collective.
class CommError : public Error {
 public:
  using Error::Error;
};

template <class C>
concept Communicator = requires(C& c, const C& cc, std::span<float> f, std::span<const float> cf,
                                std::span<double> d, std::span<std::int64_t> i, std::span<std::byte> bytes,
                                std::span<const std::int64_t> counts, ReduceOp op, int root,
                                typename C::Request& request, void (*fill)(std::span<double>)) {
  { cc.rank() } -> std::same_as<int>;
  { cc.size() } -> std::same_as<int>;
  // recv (counts[rank] elements) ← op over all ranks of their send block `rank`;
  // send holds every rank's block back to back (Σ counts elements).
  { c.reduce_scatter(cf, f, counts, op) } -> std::same_as<typename C::Request>;
  // recv (Σ counts elements) ← every rank's send (counts[r] elements from rank r), in rank order.
  { c.all_gather(cf, f, counts) } -> std::same_as<typename C::Request>;
  request.wait();
  // In place, element by element, over all ranks: on the engine's memory for floats, on the
  // host for the double and integer control values (norms, flags, hashes).
  c.all_reduce(f, op);
  c.all_reduce(d, op);
  c.all_reduce(i, op);
  // The control values that start on the engine's side: `fill` writes this rank's d.size() values
  // into a buffer in the engine's memory (for NCCL, device memory written by work enqueued on the
  // compute stream); d ← op over all ranks of them, on the host. For NCCL the one wait of the host
  // for the device a ZeRO-1 step makes.
  c.reduce_to_host(d, op, fill);
  c.broadcast(f, root);
  c.broadcast(i, root);
  c.broadcast(bytes, root);
  c.barrier();
};

}  // namespace muon::distributed
