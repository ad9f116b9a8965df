// muon/distributed/mpi.hpp: the communicator for CPU ranks, on MPI (OpenMPI from Debian).
//
// It duplicates the communicator it is given, so its traffic never matches the caller's own
// messages, and it turns MPI errors into CommError instead of aborting the job. Buffers are host
// memory. `MpiEnvironment` initialises and finalises MPI for programs that do not do it themselves.
//
//   muon::distributed::MpiEnvironment mpi(argc, argv);
//   muon::distributed::MpiCommunicator comm;                       // MPI_COMM_WORLD
//   muon::distributed::ZeroOptimizer<muon::EigenBackend, muon::distributed::MpiCommunicator> opt(params, options, comm);
#pragma once

#include <mpi.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "muon/distributed/communicator.hpp"

namespace muon::distributed {

namespace detail {

inline void check_mpi(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw CommError(std::string("MPI ") + what + " failed: " + std::string(text, static_cast<std::size_t>(length)));
}

template <class T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
  else {
    static_assert(std::is_same_v<T, std::byte>, "MPI communicator: float, double, int64 or byte buffers");
    return MPI_BYTE;
  }
}

inline MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::avg: return MPI_SUM;  // avg scales the sum afterwards
    case ReduceOp::min: return MPI_MIN;
    case ReduceOp::max: return MPI_MAX;
  }
  return MPI_SUM;
}

// MPI counts are int: larger collectives must be split by the caller (a bucket size option).
inline int mpi_count(std::int64_t n, const char* what) {
  if (n < 0 || n > std::numeric_limits<int>::max())
    throw CommError(std::string("MPI ") + what + ": " + std::to_string(n) +
                    " elements exceed MPI's int counts; use smaller buckets (ZeroOptions.bucket_elements), and split "
                    "any single parameter of more than 2^31 - 1 elements");
  return static_cast<int>(n);
}

}  // namespace detail

// Initialises MPI (with MPI_THREAD_FUNNELED: only the main thread calls MPI, OpenMP threads do
// not) unless it already is, and finalises it on destruction if it initialised it, except while
// an exception unwinds: MPI_Finalize waits for every rank, and another rank may be waiting for
// this one in a collective. Then the process exits without it, and mpirun ends the whole job.
class MpiEnvironment {
 public:
  MpiEnvironment(int& argc, char**& argv) : uncaught_(std::uncaught_exceptions()) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (initialised) return;
    int provided = 0;
    detail::check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    owns_ = true;
    if (provided < MPI_THREAD_FUNNELED) {
      MPI_Finalize();
      throw CommError("MPI_Init_thread: this MPI does not support MPI_THREAD_FUNNELED (OpenMP threads beside MPI)");
    }
  }
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  ~MpiEnvironment() {
    if (owns_ && std::uncaught_exceptions() <= uncaught_) MPI_Finalize();
  }

 private:
  bool owns_ = false;
  int uncaught_ = 0;
};

class MpiCommunicator {
  // Per-rank int counts and displacements of one bulk collective. MPI reads them until the
  // operation completes (MPI-3.1 §5.12), so the request owns them.
  struct Layout {
    std::vector<int> counts, displacements;
    bool equal = true;
  };

 public:
  // A collective in flight. `avg` scales the received sum when it completes.
  class Request {
   public:
    Request() = default;
    Request(std::unique_ptr<Layout> layout, std::span<float> scale_span, float scale)
        : layout_(std::move(layout)), scale_span_(scale_span), scale_(scale) {}
    Request(Request&& other) noexcept { *this = std::move(other); }
    Request& operator=(Request&& other) noexcept {
      std::swap(request_, other.request_);
      std::swap(layout_, other.layout_);
      std::swap(scale_span_, other.scale_span_);
      std::swap(scale_, other.scale_);
      return *this;
    }
    Request(const Request&) = delete;
    Request& operator=(const Request&) = delete;
    // An abandoned request must still complete: MPI owns its buffers until then.
    ~Request() {
      if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);
    }

    void wait() {
      if (request_ == MPI_REQUEST_NULL) return;
      detail::check_mpi(MPI_Wait(&request_, MPI_STATUS_IGNORE), "MPI_Wait");
      if (scale_ != 1.0f)
        for (float& v : scale_span_) v *= scale_;
      scale_ = 1.0f;
    }

    MPI_Request* handle() { return &request_; }

   private:
    MPI_Request request_ = MPI_REQUEST_NULL;
    std::unique_ptr<Layout> layout_;
    std::span<float> scale_span_{};
    float scale_ = 1.0f;
  };

  explicit MpiCommunicator(MPI_Comm parent = MPI_COMM_WORLD) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) throw CommError("MpiCommunicator: MPI is not initialised; call MPI_Init or hold a MpiEnvironment");
    MPI_Comm comm = MPI_COMM_NULL;
    detail::check_mpi(MPI_Comm_dup(parent, &comm), "MPI_Comm_dup");
    comm_ = std::shared_ptr<MPI_Comm>(new MPI_Comm(comm), [](MPI_Comm* c) {
      int finalised = 0;
      MPI_Finalized(&finalised);
      if (!finalised) MPI_Comm_free(c);
      delete c;
    });
    MPI_Comm_set_errhandler(*comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(*comm_, &rank_);
    MPI_Comm_size(*comm_, &size_);
  }

  [[nodiscard]] int rank() const { return rank_; }
  [[nodiscard]] int size() const { return size_; }
  [[nodiscard]] MPI_Comm native() const { return *comm_; }

  Request reduce_scatter(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts,
                         ReduceOp op) {
    if (recv.data() < send.data() + send.size() && send.data() < recv.data() + recv.size())
      throw CommError("MPI reduce_scatter: the send and receive buffers overlap");
    auto layout = check_layout(counts, send.size(), recv.size(), "reduce_scatter");
    const Layout& l = *layout;
    Request request(std::move(layout), recv, op == ReduceOp::avg ? 1.0f / static_cast<float>(size_) : 1.0f);
    if (l.equal)
      detail::check_mpi(MPI_Ireduce_scatter_block(send.data(), recv.data(), l.counts[0], MPI_FLOAT, detail::mpi_op(op),
                                                  *comm_, request.handle()),
                        "MPI_Ireduce_scatter_block");
    else
      detail::check_mpi(MPI_Ireduce_scatter(send.data(), recv.data(), l.counts.data(), MPI_FLOAT, detail::mpi_op(op),
                                            *comm_, request.handle()),
                        "MPI_Ireduce_scatter");
    return request;
  }

  Request all_gather(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts) {
    auto layout = check_layout(counts, recv.size(), send.size(), "all_gather");
    const Layout& l = *layout;
    const auto own = static_cast<std::size_t>(rank_);
    const bool in_place = send.data() == recv.data() + l.displacements[own];
    const void* source = in_place ? MPI_IN_PLACE : send.data();
    Request request(std::move(layout), {}, 1.0f);
    if (l.equal)
      detail::check_mpi(MPI_Iallgather(source, l.counts[own], MPI_FLOAT, recv.data(), l.counts[own], MPI_FLOAT, *comm_,
                                       request.handle()),
                        "MPI_Iallgather");
    else
      detail::check_mpi(MPI_Iallgatherv(source, l.counts[own], MPI_FLOAT, recv.data(), l.counts.data(),
                                        l.displacements.data(), MPI_FLOAT, *comm_, request.handle()),
                        "MPI_Iallgatherv");
    return request;
  }

  template <class T>
  void all_reduce(std::span<T> data, ReduceOp op) {
    detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, data.data(), detail::mpi_count(std::ssize(data), "all_reduce"),
                                    detail::mpi_type<T>(), detail::mpi_op(op), *comm_),
                      "MPI_Allreduce");
    if (op == ReduceOp::avg) {
      static_assert(std::is_floating_point_v<T> || std::is_integral_v<T>);
      if constexpr (std::is_floating_point_v<T>)
        for (T& v : data) v *= T{1} / static_cast<T>(size_);
      else
        throw CommError("all_reduce: avg needs a floating-point buffer");
    }
  }

  // Host memory is the engine's: `fill` writes the result itself, which is then reduced in place.
  template <class Fill>
  void reduce_to_host(std::span<double> result, ReduceOp op, Fill&& fill) {
    fill(result);
    all_reduce(result, op);
  }

  template <class T>
  void broadcast(std::span<T> data, int root) {
    detail::check_mpi(MPI_Bcast(data.data(), detail::mpi_count(std::ssize(data), "broadcast"), detail::mpi_type<T>(),
                                root, *comm_),
                      "MPI_Bcast");
  }

  void barrier() { detail::check_mpi(MPI_Barrier(*comm_), "MPI_Barrier"); }

 private:
  // Checks that there is one count per rank and that they add up to the full buffer's size.
  std::unique_ptr<Layout> check_layout(std::span<const std::int64_t> counts, std::size_t full, std::size_t own,
                                       const char* what) const {
    if (std::ssize(counts) != size_)
      throw CommError(std::string("MPI ") + what + ": " + std::to_string(counts.size()) + " counts for " +
                      std::to_string(size_) + " ranks");
    auto layout = std::make_unique<Layout>();
    std::int64_t total = 0;
    for (const std::int64_t n : counts) {
      layout->displacements.push_back(detail::mpi_count(total, what));
      layout->counts.push_back(detail::mpi_count(n, what));
      layout->equal = layout->equal && n == counts[0];
      total += n;
    }
    if (static_cast<std::size_t>(total) != full || static_cast<std::size_t>(counts[static_cast<std::size_t>(rank_)]) != own)
      throw CommError(std::string("MPI ") + what + ": buffer sizes " + std::to_string(full) + " and " +
                      std::to_string(own) + " do not match the counts (total " + std::to_string(total) + ")");
    return layout;
  }

  std::shared_ptr<MPI_Comm> comm_;
  int rank_ = 0;
  int size_ = 1;
};

static_assert(Communicator<MpiCommunicator>);

}  // namespace muon::distributed
