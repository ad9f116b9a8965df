// The LibTorch adapter on CUDA tensors: the CUDA backend runs them (on PyTorch's current stream
// and cuBLAS handle), its fp32 products stay fp32 with PyTorch's TF32 switch on, and an archive
// saved on the GPU loads on the CPU. Built where nvcc and a CUDA build of LibTorch are both found
// (tests/CMakeLists.txt); without a GPU the program exits 77 and CTest reports the tests skipped.
#define DOCTEST_CONFIG_IMPLEMENT
// LibTorch brings glog, whose CHECK macro would silently replace doctest's.
#define DOCTEST_CONFIG_NO_SHORT_MACRO_NAMES
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <muon/libtorch/muon.hpp>
#include <string>
#include <vector>

#include "gpu_main.hpp"

#if !MUON_LIBTORCH_CUDA
#error "test_torch_cuda needs the adapter's CUDA path: nvcc, muon::cuda and a CUDA build of LibTorch"
#endif

namespace {

using muon::libtorch::Engine;
using muon::libtorch::MuonOptions;

// A matrix for Muon and a bias for AdamW, on `device`, the same values wherever they live.
struct Net {
  std::vector<::torch::Tensor> params;
  Net(::torch::Device device, std::uint64_t seed) {
    ::torch::manual_seed(seed);
    params = {(::torch::randn({96, 64}) * 0.1).to(device), ::torch::zeros({64}).to(device)};
  }
  void set_gradients(std::uint64_t seed) {
    ::torch::manual_seed(seed);
    for (auto& p : params) p.mutable_grad() = ::torch::randn(p.sizes()).to(p.device());
  }
  std::vector<::torch::optim::OptimizerParamGroup> groups() {
    auto m = std::make_unique<MuonOptions>(MuonOptions(0.02).weight_decay(0.1));
    auto a = std::make_unique<MuonOptions>(MuonOptions(0.02).weight_decay(0.1).role(muon::Rule::adamw));
    std::vector<::torch::optim::OptimizerParamGroup> g;
    g.emplace_back(std::vector<::torch::Tensor>{params[0]}, std::move(m));
    g.emplace_back(std::vector<::torch::Tensor>{params[1]}, std::move(a));
    return g;
  }
};

// ‖a − b‖ / ‖b − start‖: the error relative to how far the steps moved the parameter.
double relative_error(const ::torch::Tensor& a, const ::torch::Tensor& b, const ::torch::Tensor& start) {
  const auto d = [](const ::torch::Tensor& t) { return t.detach().cpu().to(::torch::kDouble); };
  return (d(a) - d(b)).norm().item<double>() / (d(b) - d(start)).norm().item<double>();
}

const muon::libtorch::EngineOptions kFp32{.ns_precision = muon::NsPrecision::fp32};
const muon::libtorch::EngineOptions kCpuOps{.engine = Engine::torch, .ns_precision = muon::NsPrecision::fp32};

}  // namespace

DOCTEST_TEST_CASE("CUDA float32 tensors run on the CUDA backend, in fp32 with PyTorch's TF32 switch on") {
  const ::torch::Device cuda(::torch::kCUDA, 0);
  Net gpu(cuda, 1), cpu(::torch::kCPU, 1);
  const auto start = cpu.params[0].clone();
  muon::libtorch::Muon on_gpu(gpu.groups(), {}, kFp32), on_cpu(cpu.groups(), {}, kCpuOps);
  // PyTorch sets CUBLAS_TF32_TENSOR_OP_MATH on its handle; the adapter must pin it for its step.
  const bool tf32 = at::globalContext().allowTF32CuBLAS();
  at::globalContext().setAllowTF32CuBLAS(true);
  for (int step = 0; step < 3; ++step) {
    gpu.set_gradients(10 + step);
    cpu.set_gradients(10 + step);
    on_gpu.step();
    on_cpu.step();
  }
  at::globalContext().setAllowTF32CuBLAS(tf32);
  DOCTEST_CHECK(on_gpu.engine() == Engine::cuda);
  DOCTEST_CHECK(on_cpu.engine() == Engine::torch);
  DOCTEST_CHECK(gpu.params[0].is_cuda());
  // fp32 against fp32 (other summation orders): ~1e-6; TF32's 10-bit mantissa: ~1e-3.
  DOCTEST_CHECK(relative_error(gpu.params[0], cpu.params[0], start) < 1e-4);
  DOCTEST_CHECK(::torch::allclose(gpu.params[1].cpu(), cpu.params[1], 1e-5, 1e-6));
}

DOCTEST_TEST_CASE("an archive saved on the GPU loads into the CPU fallback and the run goes on") {
  const ::torch::Device cuda(::torch::kCUDA, 0);
  const auto path = std::filesystem::temp_directory_path() / ("muon_torch_cuda_" + std::to_string(::getpid()) + ".pt");
  Net gpu(cuda, 2), cpu_reference(::torch::kCPU, 2);
  const auto start = cpu_reference.params[0].clone();
  muon::libtorch::Muon on_gpu(gpu.groups(), {}, kFp32), reference(cpu_reference.groups(), {}, kCpuOps);
  for (int step = 0; step < 2; ++step) {
    gpu.set_gradients(20 + step);
    on_gpu.step();
  }
  ::torch::save(on_gpu, path.string());
  Net resumed(::torch::kCPU, 2);
  for (std::size_t i = 0; i < resumed.params.size(); ++i) resumed.params[i].copy_(gpu.params[i].cpu());
  muon::libtorch::Muon after(resumed.groups(), {}, kCpuOps);
  ::torch::load(after, path.string());
  DOCTEST_CHECK(after.step_count() == 2);
  resumed.set_gradients(22);
  after.step();
  for (int step = 0; step < 3; ++step) {
    cpu_reference.set_gradients(20 + step);
    reference.step();
  }
  DOCTEST_CHECK(relative_error(resumed.params[0], cpu_reference.params[0], start) < 1e-4);
  std::filesystem::remove(path);
}

int main(int argc, char** argv) { return muon::test::run_gpu_tests(argc, argv, "the LibTorch adapter's CUDA tests"); }
