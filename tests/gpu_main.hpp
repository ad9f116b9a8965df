// tests/gpu_main.hpp: the main of a GPU test program.
//
// Without a usable CUDA device the program exits 77, which CTest reports as skipped, unless
// MUON_REQUIRE_GPU=1 is set (scripts/gpu-check sets it): then a missing device is a failure, with
// the reason. The reason matters because a driver too old for this runtime fails the same call as a
// machine without a GPU (cudaErrorInsufficientDriver against cudaErrorNoDevice). Listing the tests
// (doctest_discover_tests, at build time) needs no device and makes no CUDA call.
//
//   int main(int argc, char** argv) { return muon::test::run_gpu_tests(argc, argv, "the CUDA backend tests"); }
#pragma once

#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace muon::test {

inline constexpr int kSkipped = 77;  // CTest's SKIP_RETURN_CODE for these programs

[[nodiscard]] inline bool gpu_required() {
  const char* v = std::getenv("MUON_REQUIRE_GPU");
  return v != nullptr && std::string_view(v) == "1";
}

inline int run_gpu_tests(int argc, char** argv, const char* what) {
  bool listing = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg(argv[i]);
    listing = listing || arg.find("list") != std::string_view::npos || arg.find("help") != std::string_view::npos ||
              arg.find("version") != std::string_view::npos;
  }
  if (!listing) {
    int devices = 0;
    const cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || devices == 0) {
      const char* reason = e != cudaSuccess ? cudaGetErrorString(e) : "0 devices";
      if (gpu_required()) {
        std::fprintf(stderr, "MUON_REQUIRE_GPU=1 but no usable CUDA device (%s): %s cannot run\n", reason, what);
        return 1;
      }
      std::printf("no usable CUDA device (%s): skipping %s (set MUON_REQUIRE_GPU=1 to fail instead)\n", reason, what);
      return kSkipped;
    }
  }
  doctest::Context context(argc, argv);
  return context.run();
}

}  // namespace muon::test
