// bench/bench_cuda.cu: the CUDA backend on the GPU, timed with CUDA events (manual time).
//
//   BM_cuda_orthogonalize  Newton–Schulz (5 Keller steps) on Moonlight-16B-A3B shapes and the
//                          64-expert stacks of one MoE layer; counter TFLOP/s from the plain-GEMM
//                          flop count 5·(4n²m + 2n³) per matrix, as bench/compare_ns.py counts it
//   BM_cuda_gram           one `gram` (X·Xᵀ, wide X) of a stack, per way of computing it (arg
//                          `how`): 0 one full GEMM (tiles = 1), 1 the tile pairs through one
//                          pointer-array batched GEMM, 2 one strided-batched GEMM per tile pair,
//                          3 (fp32 only) one cublasSsyrk per matrix, the path before fp32 stacks
//                          were batched. Counter TFLOP/s from the full product's 2n²k flops, so
//                          the tiled rows show the effective rate: the fastest `how` per shape
//                          sets CudaOptions::tile_gemm and symmetric_tile_min
//   BM_cuda_gemm_bf16      one bf16 GEMM (bf16 in and out, fp32 accumulation): the rate NS is held to
//   BM_cuda_adamw          multi-tensor AdamW; counter GB/s from 28 bytes per element
//                          (read w, g, m, v; write w, m, v)
//   BM_cuda_copy           device-to-device copy; counter GB/s from read + write bytes
//   BM_cuda_step           a whole Optimizer<CudaBackend>::step over one Moonlight MoE layer's
//                          parameters (wall time, host synchronisation included), with the
//                          gradient check of Optimizer (one sync per parameter, one_sync:0) or
//                          check_gradients_on_device (one sync in all, one_sync:1)
//
// bench/compare_ns_cuda.py runs this binary and torch.optim.Muon's NS on the same GPU and prints
// the tables of docs/performance.md. Needs a GPU; never run in CI.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <limits>
#include <muon/backends/cuda.hpp>
#include <muon/backends/cuda_gradients.hpp>
#include <muon/muon.hpp>
#include <vector>

namespace {

// Times `work` on the backend's stream with CUDA events and reports it as the iteration time.
template <class F>
void run_timed(benchmark::State& state, cudaStream_t stream, F&& work) {
  cudaEvent_t start = nullptr, stop = nullptr;
  muon::cuda_check(cudaEventCreate(&start));
  muon::cuda_check(cudaEventCreate(&stop));
  work();  // warm-up: cuBLAS heuristics, scratch growth
  muon::cuda_check(cudaStreamSynchronize(stream));
  for (auto _ : state) {
    muon::cuda_check(cudaEventRecord(start, stream));
    work();
    muon::cuda_check(cudaEventRecord(stop, stream));
    muon::cuda_check(cudaEventSynchronize(stop));
    float ms = 0.0f;
    muon::cuda_check(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

// Normal-ish random device values, made on the host once per benchmark.
void fill_random(muon::CudaBackend& gpu, std::span<float> device, unsigned seed) {
  std::vector<float> host(device.size());
  unsigned s = seed;
  for (float& x : host) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / 16777216.0f - 0.5f;
  }
  gpu.from_host(host, device);
}

void BM_cuda_orthogonalize(benchmark::State& state) {
  const std::int64_t batch = state.range(0), rows = state.range(1), cols = state.range(2);
  const auto precision = state.range(3) == 1 ? muon::NsPrecision::bf16 : muon::NsPrecision::fp32;
  muon::CudaBackend gpu(muon::CudaOptions{.ns_precision = precision});
  auto input = gpu.allocate(batch * rows * cols), x = gpu.allocate(batch * rows * cols);
  fill_random(gpu, input.span(), 1);
  const muon::MatrixStack<float> stack{x.span().data(), batch, rows, cols};
  const muon::NsOptions options{};
  muon::NsWorkspace<muon::CudaBackend> ws(gpu, stack, options);
  // Each run starts from the same input (the copy is timed too: 8 bytes per element, negligible).
  run_timed(state, gpu.stream(), [&] {
    gpu.axpby(1.0f, input.span(), 0.0f, x.span());
    muon::orthogonalize(gpu, stack, options, ws);
  });
  const double n = static_cast<double>(std::min(rows, cols)), m = static_cast<double>(std::max(rows, cols));
  const double flops = static_cast<double>(batch) * 5.0 * (4.0 * n * n * m + 2.0 * n * n * n);
  state.counters["TFLOP/s"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_cuda_gram(benchmark::State& state) {
  const std::int64_t batch = state.range(0), rows = state.range(1), cols = state.range(2), how = state.range(3);
  const bool bf16 = state.range(4) == 1;
  if (how == 3 && bf16) {
    state.SkipWithError("cuBLAS has no bf16 SYRK");
    return;
  }
  muon::CudaOptions options{.ns_precision = bf16 ? muon::NsPrecision::bf16 : muon::NsPrecision::fp32};
  options.symmetric_tile_min = how == 0 ? std::numeric_limits<std::int64_t>::max() : 64;
  options.tile_gemm = how == 2 ? muon::SymmetricTileGemm::strided_per_pair : muon::SymmetricTileGemm::pointer_array;
  muon::CudaBackend gpu(options);
  auto x = gpu.allocate(batch * rows * cols), c = gpu.allocate(batch * rows * rows);
  fill_random(gpu, x.span(), 3);
  const muon::MatrixStack<const float> xs{x.span().data(), batch, rows, cols};
  const muon::MatrixStack<float> cs{c.span().data(), batch, rows, rows};
  if (how == 3) {
    const float alpha = 1.0f, beta = 0.0f;
    run_timed(state, gpu.stream(), [&] {
      for (std::int64_t k = 0; k < batch; ++k)
        muon::cuda_check(cublasSsyrk(gpu.cublas(), CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T, static_cast<int>(rows),
                                     static_cast<int>(cols), &alpha, xs.matrix(k), static_cast<int>(cols), &beta,
                                     cs.matrix(k), static_cast<int>(rows)));
    });
  } else {
    if (how != 0 && rows % 128 != 0) {
      state.SkipWithError("the rows do not split into tiles of a multiple of 64");
      return;
    }
    run_timed(state, gpu.stream(), [&] { gpu.gram(1.0f, xs, muon::GramSide::rows, 0.0f, cs); });
  }
  const double flops = static_cast<double>(batch) * 2.0 * double(rows) * double(rows) * double(cols);
  state.counters["TFLOP/s"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
}

// X·Xᵀ of Moonlight's wide matrices and expert stacks (Gram sizes 576 to 4096; 1408 splits into
// 2 tiles of 704, not into 4 of a multiple of 64), in bf16 and fp32.
void gram_shapes(benchmark::internal::Benchmark* b) {
  for (const int bf16 : {1, 0})
    for (const auto& [batch, rows, cols] : std::vector<std::tuple<int, int, int>>{
             {1, 2048, 2048}, {1, 4096, 4096}, {1, 576, 2048}, {64, 1408, 2048}, {64, 512, 2048}})
      for (const int how : {0, 1, 2, 3}) b->Args({batch, rows, cols, how, bf16});
  b->ArgNames({"batch", "rows", "cols", "how", "bf16"});
}

void BM_cuda_gemm_bf16(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  muon::CudaBackend gpu;
  __nv_bfloat16 *a = nullptr, *b = nullptr, *c = nullptr;
  const std::size_t bytes = std::size_t(n) * n * sizeof(__nv_bfloat16);
  muon::cuda_check(cudaMalloc(&a, bytes));
  muon::cuda_check(cudaMalloc(&b, bytes));
  muon::cuda_check(cudaMalloc(&c, bytes));
  muon::cuda_check(cudaMemset(a, 0x3c, bytes));  // 0x3c3c ≈ 0.0115 in bf16: finite, nonzero
  muon::cuda_check(cudaMemset(b, 0x3c, bytes));
  muon::cuda_check(cudaDeviceSynchronize());  // the memsets ran on the legacy stream, the GEMMs do not
  const float alpha = 1.0f, beta = 0.0f;
  run_timed(state, gpu.stream(), [&] {
    muon::cuda_check(cublasGemmEx(gpu.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b,
                                 CUDA_R_16BF, n, &beta, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
  state.counters["TFLOP/s"] =
      benchmark::Counter(2.0 * n * n * double(n) / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
}

void BM_cuda_adamw(benchmark::State& state) {
  // `tensors` tensors of `elements` floats each, in one multi-tensor call.
  const std::int64_t tensors = state.range(0), elements = state.range(1);
  muon::CudaBackend gpu;
  std::vector<muon::CudaBackend::Buffer> buffers;
  std::vector<muon::kernels::AdamWTensor> list;
  for (std::int64_t i = 0; i < 4 * tensors; ++i) buffers.push_back(gpu.allocate(elements));
  for (std::int64_t i = 0; i < tensors; ++i) {
    fill_random(gpu, buffers[4 * i + 1].span(), static_cast<unsigned>(i + 1));
    list.push_back({buffers[4 * i].span().data(), buffers[4 * i + 1].span().data(), buffers[4 * i + 2].span().data(),
                    buffers[4 * i + 3].span().data(), elements});
  }
  const muon::StepValues values = muon::step_values({.lr = 1e-3, .weight_decay = 0.1}, 1.0, 1.0, 10);
  auto block = gpu.allocate(muon::kStepValuesFloats);
  gpu.from_host({reinterpret_cast<const float*>(&values), muon::kStepValuesFloats}, block.span());
  const muon::AdamWStep step{0.9f, 0.95f, 1e-8f, muon::step_values_of(block.span())};
  run_timed(state, gpu.stream(), [&] { gpu.adamw_many(list, step); });
  state.counters["GB/s"] =
      benchmark::Counter(28.0 * double(tensors * elements) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_cuda_copy(benchmark::State& state) {
  const std::int64_t elements = state.range(0);
  muon::CudaBackend gpu;
  auto from = gpu.allocate(elements), to = gpu.allocate(elements);
  run_timed(state, gpu.stream(), [&] {
    muon::cuda_check(cudaMemcpyAsync(to.span().data(), from.span().data(), std::size_t(elements) * sizeof(float),
                                    cudaMemcpyDeviceToDevice, gpu.stream()));
  });
  state.counters["GB/s"] =
      benchmark::Counter(8.0 * double(elements) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_cuda_step(benchmark::State& state) {
  const bool one_sync = state.range(0) == 1;
  // One MoE layer of Moonlight-16B-A3B (hidden 2048, 64 routed experts of 1408, 2 shared), with
  // its norms and the router (Muon, as Moonlight routes it).
  struct Spec {
    const char* name;
    muon::Role role;
    muon::Shape shape;
  };
  const std::vector<Spec> layer{{"q_proj", muon::Role::matrix, {3072, 2048}},
                                {"kv_a_proj_with_mqa", muon::Role::matrix, {576, 2048}},
                                {"kv_a_layernorm", muon::Role::norm, {512}},
                                {"kv_b_proj", muon::Role::matrix, {4096, 512}},
                                {"o_proj", muon::Role::matrix, {2048, 2048}},
                                {"input_layernorm", muon::Role::norm, {2048}},
                                {"post_attention_layernorm", muon::Role::norm, {2048}},
                                {"mlp.gate", muon::Role::matrix, {64, 2048}},
                                {"experts.gate_proj", muon::Role::matrix, {64, 1408, 2048}},
                                {"experts.up_proj", muon::Role::matrix, {64, 1408, 2048}},
                                {"experts.down_proj", muon::Role::matrix, {64, 2048, 1408}},
                                {"shared_experts.gate_proj", muon::Role::matrix, {2816, 2048}},
                                {"shared_experts.up_proj", muon::Role::matrix, {2816, 2048}},
                                {"shared_experts.down_proj", muon::Role::matrix, {2048, 2816}}};
  muon::CudaBackend gpu;
  std::vector<muon::CudaBackend::Buffer> memory;
  std::vector<muon::Parameter> table;
  for (std::size_t i = 0; i < layer.size(); ++i) {
    memory.push_back(gpu.allocate(muon::numel(layer[i].shape)));
    memory.push_back(gpu.allocate(muon::numel(layer[i].shape)));
    fill_random(gpu, memory.back().span(), static_cast<unsigned>(i + 1));
  }
  for (std::size_t i = 0; i < layer.size(); ++i)
    table.push_back({layer[i].name, layer[i].role, {memory[2 * i].span().data(), layer[i].shape},
                     {memory[2 * i + 1].span().data(), layer[i].shape}});
  muon::Optimizer<muon::CudaBackend> opt(table, muon::Options{.lr = 4.2e-4}, gpu);
  const auto step = [&] {
    (void)opt.step(one_sync ? muon::check_gradients_on_device(gpu, opt.parameters()) : opt.check_gradients());
    muon::cuda_check(cudaStreamSynchronize(gpu.stream()));
  };
  step();  // warm-up
  for (auto _ : state) step();
}

// Moonlight-16B-A3B matrices (docs/algorithms.md §2.3) and the 64-expert stacks of one MoE layer.
void moonlight_shapes(benchmark::internal::Benchmark* b) {
  for (const int bf16 : {1, 0})
    for (const auto& [batch, rows, cols] : std::vector<std::tuple<int, int, int>>{{1, 2048, 2048},
                                                                                  {1, 3072, 2048},
                                                                                  {1, 1408, 2048},
                                                                                  {1, 2048, 1408},
                                                                                  {1, 576, 2048},
                                                                                  {1, 4096, 512},
                                                                                  {1, 11264, 2048},
                                                                                  {1, 4096, 4096},
                                                                                  {64, 1408, 2048},
                                                                                  {64, 2048, 1408}})
      b->Args({batch, rows, cols, bf16});
  b->ArgNames({"batch", "rows", "cols", "bf16"});
}

BENCHMARK(BM_cuda_orthogonalize)->Apply(moonlight_shapes)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_cuda_gram)->Apply(gram_shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_gemm_bf16)->Arg(2048)->Arg(4096)->Arg(8192)->UseManualTime()->Unit(benchmark::kMicrosecond);
// 64 tensors of 4 Mi elements (1 GiB of fp32 state in all), and one embedding-sized tensor.
BENCHMARK(BM_cuda_adamw)
    ->Args({64, 1 << 22})
    ->Args({1, 163840 * 2048 / 8})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_copy)->Arg(1 << 28)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_cuda_step)->ArgName("one_sync")->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "bench_cuda needs a CUDA device\n");
    return 1;
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
