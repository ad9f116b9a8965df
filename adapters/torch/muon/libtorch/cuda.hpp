// muon/libtorch/cuda.hpp: how muon::libtorch::Muon runs muon::CudaBackend inside PyTorch's CUDA
// context. Included by muon/libtorch/muon.hpp where MUON_LIBTORCH_CUDA is 1 (nvcc, muon::cuda and
// a CUDA build of LibTorch); not meant to be included alone.
//
// The backend works on PyTorch's current stream and cuBLAS handle of the parameters' device, taken
// at the first step. Around each step (and each load) a StepScope
//   - makes the parameters' device current;
//   - orders the backend's stream after PyTorch's current stream (which may have changed since the
//     first step) and PyTorch's current stream after the step, with events: no host wait;
//   - pins the handle's math mode to CUBLAS_DEFAULT_MATH and restores PyTorch's afterwards. PyTorch
//     sets CUBLAS_TF32_TENSOR_OP_MATH on its handle when torch.backends.cuda.matmul.allow_tf32 is
//     set, and cuBLAS then runs CUBLAS_COMPUTE_32F products (and SSYRK) in TF32: the fp32 products
//     of NsPrecision::fp32 would silently lose 13 mantissa bits.
// The CUDA backend binds its own workspace to the handle before each cuBLAS call
// (detail::Context::bind), since PyTorch rebinds the handle before each of its own uses.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <muon/backends/cuda.hpp>
#include <muon/cuda_check.hpp>

namespace muon::libtorch::internal {

// The CUDA backend on PyTorch's current stream and cuBLAS handle of `device`.
inline muon::CudaBackend cuda_backend_for(torch::Device device, muon::NsPrecision ns_precision) {
  const c10::cuda::CUDAGuard guard(device);
  return muon::CudaBackend(at::cuda::getCurrentCUDAStream(device.index()).stream(),
                           at::cuda::getCurrentCUDABlasHandle(), muon::CudaOptions{.ns_precision = ns_precision});
}

template <>
struct StepScope<muon::CudaBackend> {
  explicit StepScope(Run<muon::CudaBackend>& run)
      : guard_(run.device),
        blas_(run.backend.cublas()),
        ours_(run.backend.stream()),
        torchs_(at::cuda::getCurrentCUDAStream(run.device.index()).stream()) {
    if (torchs_ != ours_) wait(ours_, torchs_);
    cuda_check(cublasGetMathMode(blas_, &mode_));
    cuda_check(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH));
  }
  StepScope(const StepScope&) = delete;
  StepScope& operator=(const StepScope&) = delete;
  // Errors are not reported here (a destructor); a failed step has already thrown.
  ~StepScope() {
    cublasSetMathMode(blas_, mode_);
    if (torchs_ != ours_) {
      try {
        wait(torchs_, ours_);
      } catch (...) {
      }
    }
  }

 private:
  // `waiter` runs what is enqueued after this only once everything enqueued on `first` so far ran.
  static void wait(cudaStream_t waiter, cudaStream_t first) {
    cudaEvent_t event = nullptr;
    cuda_check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    const cudaError_t recorded = cudaEventRecord(event, first);
    const cudaError_t waited = recorded == cudaSuccess ? cudaStreamWaitEvent(waiter, event, 0) : recorded;
    cudaEventDestroy(event);  // released once the wait is satisfied
    cuda_check(waited);
  }

  c10::cuda::CUDAGuard guard_;
  cublasHandle_t blas_;
  cudaStream_t ours_, torchs_;
  cublasMath_t mode_ = CUBLAS_DEFAULT_MATH;
};

}  // namespace muon::libtorch::internal
