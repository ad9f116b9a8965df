// ZeRO-1 on NCCL and the CUDA backend, at world size 1 (NCCL takes one rank per GPU, and the lent
// machines have one): the same checks as the MPI tests where one rank can make them. Exits 77
// (skipped) without a GPU, or fails with MUON_REQUIRE_GPU=1 (gpu_main.hpp). Multi-rank ZeRO-1 logic is covered by test_zero_mpi.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <filesystem>
#include <limits>
#include <muon/backends/cuda.hpp>
#include <muon/distributed/nccl.hpp>
#include <muon/distributed/zero1.hpp>
#include <muon/optimizer.hpp>
#include <muon/state_file.hpp>
#include <unistd.h>

#include "gpu_main.hpp"
#include "zero_support.hpp"

using muon::CudaBackend;
using muon::distributed::NcclCommunicator;
using Zero = muon::distributed::ZeroOptimizer<CudaBackend, NcclCommunicator>;
using Single = muon::Optimizer<CudaBackend>;

namespace {

// fp32 Newton–Schulz, so that the comparison is not dominated by bf16 rounding.
const muon::CudaOptions kFp32{.ns_precision = muon::NsPrecision::fp32};
const muon::Options kOptions{.lr = 0.02, .weight_decay = 0.1};
const muon::distributed::ZeroOptions kZero{.bucket_elements = 300};

NcclCommunicator one_rank(const CudaBackend& gpu) {
  ncclUniqueId id;
  muon::cuda_check(ncclGetUniqueId(&id));
  return NcclCommunicator(id, 0, 1, gpu.stream());
}

// The test model's tensors in device memory; gradients and values go through the host.
struct DeviceModel {
  CudaBackend& gpu;
  muon::test::ZeroModel host;
  std::vector<CudaBackend::Buffer> values, grads;

  explicit DeviceModel(CudaBackend& backend) : gpu(backend) {
    for (const auto& t : host.tensors) {
      values.push_back(gpu.allocate(static_cast<std::int64_t>(t.value.size())));
      grads.push_back(gpu.allocate(static_cast<std::int64_t>(t.value.size())));
      gpu.from_host(t.value, values.back().span());
    }
  }
  std::vector<muon::Parameter> table() {
    std::vector<muon::Parameter> out;
    for (std::size_t i = 0; i < host.tensors.size(); ++i) {
      const auto& t = host.tensors[i];
      out.push_back({t.name, t.role, {values[i].span().data(), t.shape}, {grads[i].span().data(), t.shape}});
    }
    return out;
  }
  void set_gradients(std::int64_t step) {
    host.set_mean_gradients(step, 1);
    for (std::size_t i = 0; i < host.tensors.size(); ++i) gpu.from_host(host.tensors[i].grad, grads[i].span());
  }
  std::vector<std::vector<float>> download() {
    std::vector<std::vector<float>> out;
    for (std::size_t i = 0; i < values.size(); ++i) {
      out.emplace_back(host.tensors[i].value.size());
      gpu.to_host(values[i].span(), out.back());
    }
    return out;
  }
};

}  // namespace

// cuBLAS may pick other kernels for another batch count (the owners batch per bucket), which
// reorders fp32 sums: 1e-5 absolute after five steps of lr 0.02 on values of about 0.1.
constexpr double kTolerance = 1e-5;

TEST_CASE("NCCL, one rank: ZeRO-1 equals the single-process optimizer on the GPU") {
  CudaBackend gpu(kFp32);
  DeviceModel zm(gpu), ref(gpu);
  Zero zero(zm.table(), kOptions, one_rank(gpu), gpu, kZero);
  Single single(ref.table(), kOptions, gpu);
  for (int step = 0; step < 5; ++step) {
    zm.set_gradients(step);
    ref.set_gradients(step);
    (void)zero.step();
    (void)single.step();
  }
  CHECK(muon::test::max_abs_diff(zm.download(), ref.download()) <= kTolerance);
}

TEST_CASE("NCCL, one rank: a ZeRO-1 checkpoint resumes in the single-process optimizer") {
  CudaBackend gpu(kFp32);
  DeviceModel zm(gpu), ref(gpu);
  Zero zero(zm.table(), kOptions, one_rank(gpu), gpu, kZero);
  Single uninterrupted(ref.table(), kOptions, gpu);
  for (int step = 0; step < 3; ++step) {
    zm.set_gradients(step);
    ref.set_gradients(step);
    (void)zero.step();
    (void)uninterrupted.step();
  }
  const auto path = std::filesystem::temp_directory_path() / ("muon_zero_nccl_" + std::to_string(::getpid()));
  zero.save(path);
  Single resumed(zm.table(), kOptions, gpu);
  muon::load_state(resumed, path);
  std::filesystem::remove(path);
  for (int step = 3; step < 6; ++step) {
    zm.set_gradients(step);
    ref.set_gradients(step);
    (void)resumed.step();
    (void)uninterrupted.step();
  }
  CHECK(muon::test::max_abs_diff(zm.download(), ref.download()) <= kTolerance);
}

TEST_CASE("NCCL, one rank: a NaN gradient rejects the step and changes nothing") {
  CudaBackend gpu(kFp32);
  DeviceModel zm(gpu);
  Zero zero(zm.table(), kOptions, one_rank(gpu), gpu, kZero);
  zm.set_gradients(0);
  (void)zero.step();
  const auto before = zm.download();
  zm.host.set_mean_gradients(1, 1);
  zm.host.tensors[4].grad[100] = std::numeric_limits<float>::quiet_NaN();
  gpu.from_host(zm.host.tensors[4].grad, zm.grads[4].span());
  CHECK_THROWS_AS((void)zero.step(), muon::NonFiniteGradient);
  CHECK(zm.download() == before);
  CHECK(zero.step_count() == 1);
}

int main(int argc, char** argv) { return muon::test::run_gpu_tests(argc, argv, "the NCCL tests"); }
