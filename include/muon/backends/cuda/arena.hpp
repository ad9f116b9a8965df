// muon/backends/cuda/arena.hpp: the CUDA backend's scratch arena and the carver that places
// aligned pieces in it. Internal (namespace detail): users reach the arena through
// CudaBackend::scratch, scratch_bytes, retired_scratch_count and release_retired_scratch.
//
//   Carver measure;  (void)measure.take<double>(parts);        // first measure,
//   Carver carve(static_cast<char*>(arena.get(measure.bytes(), stream)));
//   double* partial = carve.take<double>(parts);                // then place, in the same order
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "muon/backends/cuda/arena_growth.hpp"
#include "muon/cuda_check.hpp"

namespace muon::detail {

// The scratch arena: one device allocation that every operation may use from offset 0 (they run
// in stream order), for bf16 operand copies, norm partials and GEMM pointer arrays. It grows
// geometrically (grown_arena_bytes, muon/backends/cuda/arena_growth.hpp), never during a graph
// capture, and outgrown arenas are returned as soon as no captured graph can use them:
//   - an arena never handed out while the stream was capturing is known to no graph, so it is
//     freed at once when it is outgrown, stream-ordered (cudaFreeAsync: the work already enqueued
//     on it finishes first, and the memory goes back to the stream's pool);
//   - an arena handed out during a capture may be used by every replay of that graph, whose life
//     the backend does not see: it is kept until release_retired() (the owner of the graphs calls
//     it once they are destroyed, or re-captured) or the backend's end.
// Whether a capture is active is asked of CUDA (cudaStreamIsCapturing) on every hand-out.
class ScratchArena {
 public:
  ScratchArena() = default;
  ScratchArena(const ScratchArena&) = delete;
  ScratchArena& operator=(const ScratchArena&) = delete;

  // At least `bytes` of scratch. Growing it allocates, which a graph capture must not do: run
  // the captured work once before capturing, so the arena already has its final size.
  void* get(std::size_t bytes, cudaStream_t stream) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    cuda_check(cudaStreamIsCapturing(stream, &status));
    const bool capturing = status != cudaStreamCaptureStatusNone;
    if (bytes > bytes_) {
      if (capturing)
        throw CudaError("CudaBackend: the scratch arena must grow to " + std::to_string(bytes) +
                        " bytes during a CUDA graph capture; run the captured work once before capturing");
      const std::size_t grown = grown_arena_bytes(bytes_, bytes);
      void* fresh = nullptr;
      cuda_check(cudaMallocAsync(&fresh, grown, stream));
      if (data_ != nullptr) {
        if (captured_)
          retired_.push_back(data_);
        else
          cuda_check(cudaFreeAsync(data_, stream));
      }
      data_ = fresh;
      bytes_ = grown;
      captured_ = false;
    }
    captured_ = captured_ || capturing;
    return data_;
  }

  [[nodiscard]] std::size_t bytes() const { return bytes_; }
  // Outgrown arenas kept for graphs captured while they were current.
  [[nodiscard]] std::size_t retired_count() const { return retired_.size(); }

  // Frees the retired arenas, stream-ordered. Only once no graph captured before the arena last
  // grew will be launched again (they may read the retired arenas).
  void release_retired(cudaStream_t stream) {
    for (void*& arena : retired_) {
      cuda_check(cudaFreeAsync(arena, stream));
      arena = nullptr;
    }
    retired_.clear();
  }

  // At the backend's end, after the stream was synchronised; errors are not reported (a destructor).
  void release() noexcept {
    if (data_ != nullptr) cudaFree(data_);
    for (void* arena : retired_) cudaFree(arena);
    retired_.clear();
    data_ = nullptr;
    bytes_ = 0;
  }
  [[nodiscard]] bool empty() const { return data_ == nullptr && retired_.empty(); }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  bool captured_ = false;       // handed out during a capture since it was allocated
  std::vector<void*> retired_;  // outgrown, but a captured graph may use them
};

// Carves aligned pieces out of the scratch arena: first measure (arena == nullptr), then place.
class Carver {
 public:
  explicit Carver(char* arena = nullptr) : arena_(arena) {}
  template <class T>
  T* take(std::int64_t count) {
    offset_ = (offset_ + 255) / 256 * 256;  // 256 bytes: what cuBLAS wants for its operands
    T* p = arena_ == nullptr ? nullptr : reinterpret_cast<T*>(arena_ + offset_);
    offset_ += static_cast<std::size_t>(count) * sizeof(T);
    return p;
  }
  [[nodiscard]] std::size_t bytes() const { return offset_; }

 private:
  char* arena_;
  std::size_t offset_ = 0;
};

}  // namespace muon::detail
