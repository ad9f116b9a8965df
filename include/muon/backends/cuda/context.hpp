// muon/backends/cuda/context.hpp: what the CUDA backend and its Buffers share: the stream, the
// cuBLAS handle with its workspace and pinned math mode, and the scratch arena. Internal
// (namespace detail); muon/backends/cuda.hpp is what users include.
//
//   const BlasMathGuard math = ctx.bind();  // before a sequence of cuBLAS calls on ctx.blas
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "muon/backends/cuda/arena.hpp"
#include "muon/cuda_check.hpp"
#include "muon/error.hpp"

namespace muon::detail {

// cuBLAS takes int dimensions.
inline int blas_int(std::int64_t v, const char* what) {
  if (v > std::numeric_limits<int>::max())
    throw InvalidArgument(std::string("CudaBackend: ") + what + " = " + std::to_string(v) +
                          " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

// Pins the math mode of a cuBLAS handle for one sequence of our calls and gives the caller's mode
// back at the end. A caller's handle may be in CUBLAS_TF32_TENSOR_OP_MATH (PyTorch's, with
// allow_tf32) or CUBLAS_FP32_EMULATED_BF16X9_MATH, either of which lets cuBLAS replace fp32
// products by TF32 or emulated ones; we pin CUBLAS_DEFAULT_MATH: fp32 products are then true fp32
// (CUBLAS_COMPUTE_32F on fp32 operands, cublasSsyrk), while the bf16 products keep their tensor
// cores. Not CUBLAS_PEDANTIC_MATH: it turns the cublas<T> routines into the _PEDANTIC compute
// types ("standard arithmetic and exact specified internal storage format"), meant for numerical
// studies and possibly slower, where fp32 needs only "no TF32, no emulation". DEFAULT also leaves
// cuBLAS free to reduce split-K partial sums of the bf16-output products in bf16 (no
// CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION), as PyTorch allows by default. Whether
// DEFAULT meets the fp32 bound is what tests/test_cuda.cu checks on a GPU.
class BlasMathGuard {
 public:
  explicit BlasMathGuard(cublasHandle_t blas) : blas_(blas) {
    cuda_check(cublasGetMathMode(blas_, &saved_));
    if (saved_ != CUBLAS_DEFAULT_MATH) cuda_check(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
  }
  BlasMathGuard(const BlasMathGuard&) = delete;
  BlasMathGuard& operator=(const BlasMathGuard&) = delete;
  // Errors are not reported here (a destructor); setting a mode the handle had cannot fail.
  ~BlasMathGuard() {
    if (saved_ != CUBLAS_DEFAULT_MATH) cublasSetMathMode(blas_, saved_);
  }

 private:
  cublasHandle_t blas_;
  cublasMath_t saved_ = CUBLAS_DEFAULT_MATH;
};

// What every Buffer and the backend share: the stream, the cuBLAS handle and its workspace, and
// the scratch arena.
struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  bool owns_stream = false, owns_blas = false;
  void* blas_workspace = nullptr;
  std::size_t workspace_bytes = 0;
  ScratchArena scratch;

  // own_stream: make a non-blocking stream; else use `s` (null: the legacy default stream).
  // A null `h` makes a handle of its own.
  Context(bool own_stream, cudaStream_t s, cublasHandle_t h, std::size_t workspace)
      : stream(s), blas(h), workspace_bytes(workspace) {
    try {
      if (own_stream) {
        cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        owns_stream = true;
      }
      if (blas == nullptr) {
        cuda_check(cublasCreate(&blas));
        owns_blas = true;
      }
      // A workspace the handle keeps for good: cuBLAS then allocates nothing during graph capture.
      // cublasSetStream resets the workspace, hence this order.
      cuda_check(cublasSetStream(blas, stream));
      cuda_check(cudaMalloc(&blas_workspace, workspace_bytes));
      cuda_check(cublasSetWorkspace(blas, blas_workspace, workspace_bytes));
    } catch (...) {
      release();
      throw;
    }
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() { release(); }

  // Before each cuBLAS sequence: a caller's handle may have been rebound by its other users
  // (PyTorch sets its own stream before each use, which also drops our workspace), so bind it
  // again; and pin the math mode for the sequence (the guard gives the caller's back).
  [[nodiscard]] BlasMathGuard bind() {
    if (!owns_blas) {
      cuda_check(cublasSetStream(blas, stream));
      cuda_check(cublasSetWorkspace(blas, blas_workspace, workspace_bytes));
    }
    return BlasMathGuard(blas);
  }

  void* scratch_of(std::size_t bytes) { return scratch.get(bytes, stream); }

  // Errors are not reported here (it runs in a destructor); the calls only release resources.
  void release() noexcept {
    if (owns_stream || blas_workspace != nullptr || !scratch.empty()) cudaStreamSynchronize(stream);
    scratch.release();
    // A caller's handle must not keep pointing at the workspace freed below; setting its stream
    // puts it back on cuBLAS's own workspace.
    if (!owns_blas && blas != nullptr && blas_workspace != nullptr) cublasSetStream(blas, stream);
    if (owns_blas) cublasDestroy(blas);
    if (blas_workspace != nullptr) cudaFree(blas_workspace);
    if (owns_stream) cudaStreamDestroy(stream);
    blas_workspace = nullptr;
    owns_blas = owns_stream = false;
  }
};

}  // namespace muon::detail
