// muon/cuda_check.hpp: the one way a failed CUDA runtime, cuBLAS or NCCL call becomes an error.
//
//   muon::cuda_check(cudaMemcpyAsync(...));   // throws muon::CudaError naming the call site
//
// Each library's status type has a StatusTraits specialisation (here for the CUDA runtime and
// cuBLAS; in distributed/nccl.hpp for NCCL): how success looks, the library's name for the
// status, and the exception type (CudaError, or CommError for the engine behind ZeRO-1). The
// message names the library, the status, and the source location of the check, taken by
// std::source_location rather than a macro.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <source_location>
#include <string>

#include "muon/error.hpp"

namespace muon {

// A CUDA runtime or cuBLAS call failed; the message names the library, the status and the place.
class CudaError : public Error {
 public:
  using Error::Error;
};

template <class Status>
struct StatusTraits;

template <>
struct StatusTraits<cudaError_t> {
  using Exception = CudaError;
  static constexpr const char* library = "CUDA";
  static bool ok(cudaError_t s) { return s == cudaSuccess; }
  static std::string describe(cudaError_t s) { return std::string(cudaGetErrorName(s)) + " (" + cudaGetErrorString(s) + ")"; }
};

template <>
struct StatusTraits<cublasStatus_t> {
  using Exception = CudaError;
  static constexpr const char* library = "cuBLAS";
  static bool ok(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS; }
  static std::string describe(cublasStatus_t s) {
    return std::string(cublasGetStatusName(s)) + " (" + cublasGetStatusString(s) + ")";
  }
};

// Throws StatusTraits<Status>::Exception when `status` is a failure.
template <class Status>
void cuda_check(Status status, std::source_location where = std::source_location::current()) {
  using Traits = StatusTraits<Status>;
  if (Traits::ok(status)) return;
  throw typename Traits::Exception(std::string(Traits::library) + " call failed in " + where.function_name() + " at " +
                                   where.file_name() + ":" + std::to_string(where.line()) + ": " +
                                   Traits::describe(status));
}

}  // namespace muon
