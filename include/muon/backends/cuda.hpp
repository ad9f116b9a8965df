// muon/backends/cuda.hpp: the CUDA backend, on cuBLAS and the kernels in kernels/*.cuh.
//
// Models muon::Backend over device memory: Buffers are stream-ordered device allocations,
// `span()` views device memory, and the parameters and gradients in the optimizer's table are
// device pointers. Every operation is enqueued on one stream (the user's, or one the backend
// makes) and none synchronises the host, except those whose result the host needs:
// `sum_squares` (a double for clipping and the NaN guard), `to_host` and `from_host`, and
// `upload` outside a capture. The step's numbers (lr, decay, clipping factor, bias corrections)
// are read by the kernels from the step block (muon::StepValues) that `upload` fills, never
// passed as kernel arguments, so Optimizer::apply() (the block's copy, momentum → Newton–Schulz →
// decay and scaled update, AdamW) captured once in a CUDA graph replays every later step right:
// run opt.begin_step(opt.check_gradients()) on the host, then launch the graph. The check costs one
// synchronisation per parameter; muon/backends/cuda_gradients.hpp does it with one in all.
//
// Newton–Schulz precision (CudaOptions::ns_precision):
//   bf16 (default, as KellerJordan/Muon, Moonlight and torch.optim.Muon): products take bf16
//     operands with fp32 accumulation and an fp32 result. Buffers stay fp32 (the concept's
//     type); each product rounds its operands to bf16 into the backend's scratch first, which
//     costs one O(n·m) pass per operand against the O(n²·m) product.
//   fp32: fp32 GEMMs (no TF32) and cublasSsyrk.
// Symmetric products (`gram`): fp32 uses cublasSsyrk per matrix; bf16 has no SYRK in cuBLAS, so
// it runs batched GEMMs over the upper-triangle tile pairs when the tiles are large enough to
// keep the GEMMs efficient (CudaOptions::symmetric_tile_min), else one full GEMM; then mirrors.
//
// Include from .cu files (nvcc) only, and link muon::cuda.
//
//   muon::CudaBackend gpu;  // or muon::CudaBackend(stream, cublas_handle)
//   muon::Optimizer<muon::CudaBackend> opt(params_on_device, muon::Options{.lr = 4.2e-4}, gpu);
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/adamw.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/norms.cuh"
#include "kernels/symmetric.cuh"
#include "muon/backends/cuda/arena_growth.hpp"
#include "muon/backend.hpp"
#include "muon/cuda_check.hpp"
#include "muon/error.hpp"
#include "muon/orthogonalize.hpp"

namespace muon {

// How the tile pairs of a symmetric product go to cuBLAS (CudaOptions::tile_gemm):
//   pointer_array:    one cublasGemmBatchedEx over every pair of every matrix, its pointer
//                     arrays written on the device (two launches in all, whatever the tiles);
//   strided_per_pair: one cublasGemmStridedBatchedEx per tile pair over the stack (T(T+1)/2
//                     launches, no pointer arrays: cuBLAS knows the operands are evenly spaced).
// Untuned: bench_cuda's BM_cuda_gram times both against one full GEMM (tiles = 1).
enum class SymmetricTileGemm { pointer_array, strided_per_pair };

struct CudaOptions {
  NsPrecision ns_precision = NsPrecision::bf16;  // automatic is bf16 too: every GPU this targets has it
  // bf16 `gram` splits the n×n result into tiles of side n/T (T = 4 or 2, the tile a multiple of
  // 64) and computes only the T(T+1)/2 upper tile pairs when a tile is at least this big; smaller
  // tiles lose more GEMM efficiency than the 25–37% of flops they save. Untuned: measure on the GPU.
  std::int64_t symmetric_tile_min = 512;
  SymmetricTileGemm tile_gemm = SymmetricTileGemm::pointer_array;
  std::size_t cublas_workspace_bytes = std::size_t{32} << 20;  // cuBLAS's recommendation for Hopper
  // The most elements (matrices × rows × cols) one batched Newton–Schulz call takes; a larger
  // stack runs in chunks. Bounds the scratch and the NsWorkspace (about 6 GiB at 2²⁸) while a
  // layer's 64 experts [64, 1408, 2048] (185 M elements) still go in one call.
  std::int64_t ns_batch_elements = std::int64_t{1} << 28;
};

namespace detail {


// cuBLAS takes int dimensions.
inline int blas_int(std::int64_t v, const char* what) {
  if (v > std::numeric_limits<int>::max())
    throw InvalidArgument(std::string("CudaBackend: ") + what + " = " + std::to_string(v) +
                          " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

// Pins the math mode of a cuBLAS handle for one sequence of our calls and gives the caller's mode
// back at the end. A caller's handle may be in CUBLAS_TF32_TENSOR_OP_MATH (PyTorch's, with
// allow_tf32), which turns fp32 GEMMs into TF32 ones; we pin CUBLAS_DEFAULT_MATH: fp32 products
// are then true fp32 (compute type CUBLAS_COMPUTE_32F, no TF32), while the bf16 products keep
// their tensor cores. CUBLAS_PEDANTIC_MATH would also forbid the reduced-precision reductions
// cuBLAS may use in split-K and its fastest kernels, which no reference asks for and costs speed;
// the fp32 conformance bound (tests/test_cuda.cu) holds with DEFAULT.
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

}  // namespace detail

class CudaBackend {
 public:
  // Device memory for n floats, zero-filled, allocated and freed in the backend's stream order.
  class Buffer {
   public:
    Buffer() = default;
    Buffer(std::shared_ptr<detail::Context> context, std::int64_t n)
        : context_(std::move(context)), size_(static_cast<std::size_t>(n)) {
      if (n == 0) return;
      void* p = nullptr;
      cuda_check(cudaMallocAsync(&p, size_ * sizeof(float), context_->stream));
      data_ = static_cast<float*>(p);
      cuda_check(cudaMemsetAsync(data_, 0, size_ * sizeof(float), context_->stream));
    }
    Buffer(Buffer&& other) noexcept { swap(other); }
    Buffer& operator=(Buffer&& other) noexcept {
      Buffer(std::move(other)).swap(*this);
      return *this;
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() {
      if (data_ != nullptr) cudaFreeAsync(data_, context_->stream);
    }

    [[nodiscard]] std::span<float> span() { return {data_, size_}; }
    [[nodiscard]] std::span<const float> span() const { return {data_, size_}; }

   private:
    void swap(Buffer& other) noexcept {
      std::swap(context_, other.context_);
      std::swap(data_, other.data_);
      std::swap(size_, other.size_);
    }
    std::shared_ptr<detail::Context> context_;
    float* data_ = nullptr;
    std::size_t size_ = 0;
  };

  // A stream and a cuBLAS handle of its own, on the current device.
  CudaBackend() : CudaBackend(CudaOptions{}) {}
  explicit CudaBackend(CudaOptions options)
      : options_(options),
        context_(std::make_shared<detail::Context>(true, nullptr, nullptr, options.cublas_workspace_bytes)) {}
  // The caller's stream and handle (either may be null: the default stream; a handle of its own).
  // The backend sets the handle's stream and workspace; the caller keeps both alive meanwhile.
  CudaBackend(cudaStream_t stream, cublasHandle_t blas, CudaOptions options = {})
      : options_(options),
        context_(std::make_shared<detail::Context>(false, stream, blas, options.cublas_workspace_bytes)) {}

  [[nodiscard]] cudaStream_t stream() const { return context_->stream; }
  [[nodiscard]] cublasHandle_t cublas() const { return context_->blas; }
  [[nodiscard]] const CudaOptions& options() const { return options_; }

  [[nodiscard]] Buffer allocate(std::int64_t n) { return Buffer(context_, n); }

  // Pinned host memory for n floats, zero-filled: `upload` copies from it without waiting, and a
  // graph captures that copy as a memcpy node that reads it at every replay.
  class HostBuffer {
   public:
    HostBuffer() = default;
    explicit HostBuffer(std::int64_t n) : size_(static_cast<std::size_t>(n)) {
      if (n == 0) return;
      void* p = nullptr;
      cuda_check(cudaMallocHost(&p, size_ * sizeof(float)));
      data_.reset(static_cast<float*>(p));
      std::fill_n(data_.get(), size_, 0.0f);
    }
    [[nodiscard]] std::span<float> span() { return {data_.get(), size_}; }

   private:
    struct Free {
      void operator()(float* p) const noexcept { cudaFreeHost(p); }
    };
    std::unique_ptr<float, Free> data_;
    std::size_t size_ = 0;
  };
  [[nodiscard]] HostBuffer allocate_host(std::int64_t n) { return HostBuffer(n); }

  // C = α·op(A)·op(B) + β·C per matrix. Row-major C = op(A)·op(B) is column-major
  // Cᵀ = op(B)ᵀ·op(A)ᵀ, and a row-major matrix read column-major is its transpose: so cuBLAS gets
  // B first, each with its own transpose flag, and the leading dimensions are the row lengths.
  void gemm(float alpha, MatrixStack<const float> a, Transpose ta, MatrixStack<const float> b, Transpose tb, float beta,
            MatrixStack<float> c) {
    if (c.size() == 0) return;
    const detail::BlasMathGuard math = context_->bind();
    const std::int64_t k = ta == Transpose::yes ? a.rows : a.cols;
    const bool bf16 = options_.ns_precision != NsPrecision::fp32;
    const void* pa = a.data;
    const void* pb = b.data;
    if (bf16) {
      const bool same = a.data == b.data && a.size() == b.size();
      detail::Carver measure;
      (void)measure.take<__nv_bfloat16>(a.size());
      if (!same) (void)measure.take<__nv_bfloat16>(b.size());
      detail::Carver carve(static_cast<char*>(context_->scratch_of(measure.bytes())));
      __nv_bfloat16* a16 = carve.take<__nv_bfloat16>(a.size());
      __nv_bfloat16* b16 = same ? a16 : carve.take<__nv_bfloat16>(b.size());
      to_bf16(a.span(), a16);
      if (!same) to_bf16(b.span(), b16);
      pa = a16;
      pb = b16;
    }
    const cudaDataType_t operand = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cuda_check(cublasGemmStridedBatchedEx(
        context_->blas, op(tb), op(ta), blas_int(c.cols, "columns"), blas_int(c.rows, "rows"),
        blas_int(k, "inner size"), &alpha, pb, operand, blas_int(b.cols, "ldb"), b.matrix_size(), pa, operand,
        blas_int(a.cols, "lda"), a.matrix_size(), &beta, c.data, CUDA_R_32F, blas_int(c.cols, "ldc"), c.matrix_size(),
        blas_int(c.batch, "batch"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // C = α·X·Xᵀ + β·C (side rows) or α·Xᵀ·X + β·C (side cols), C symmetric. cuBLAS has SYRK for
  // fp32 only, and no batched SYRK:
  //   fp32, one matrix: cublasSsyrk on the column-major Xᵀ (ld = cols; trans T gives X·Xᵀ, N gives
  //     Xᵀ·X), n²·k flops; it fills its upper triangle, the row-major lower one, then mirrored.
  //   fp32 stacks, and bf16: symmetric_product, one batched call for the whole stack: the tile
  //     pairs (T(T+1)/2 of T² tiles: 62.5% of the full product's 2n²k flops at T = 4, 75% at 2)
  //     when the tiles are large enough, else one strided-batched GEMM of the full product (2n²k
  //     flops, twice SYRK's, in one launch where SYRK took one per matrix: for the small Gram
  //     matrices of a stack, launches cost more than flops). Which wins for fp32 stacks of large
  //     matrices against a SYRK loop is to be measured on the first GPU run (BM_cuda_gram).
  // With β ≠ 0 the mirrored paths need C symmetric, as the concept says.
  void gram(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c) {
    if (c.size() == 0) return;
    const detail::BlasMathGuard math = context_->bind();
    const bool rows = side == GramSide::rows;
    const std::int64_t n = rows ? x.rows : x.cols, inner = rows ? x.cols : x.rows;
    const bool fp32 = options_.ns_precision == NsPrecision::fp32;
    if (fp32 && x.batch == 1) {
      cuda_check(cublasSsyrk(context_->blas, CUBLAS_FILL_MODE_UPPER, rows ? CUBLAS_OP_T : CUBLAS_OP_N,
                             blas_int(n, "Gram size"), blas_int(inner, "inner size"), &alpha, x.data,
                             blas_int(x.cols, "ldx"), &beta, c.data, blas_int(n, "ldc")));
      mirror_lower(c.data, n, 1);
      return;
    }
    const int tiles = symmetric_tiles(n);
    detail::Carver measure;
    if (!fp32) (void)measure.take<__nv_bfloat16>(x.size());
    (void)measure.take<void*>(tile_pointer_count(x.batch, tiles));
    detail::Carver carve(static_cast<char*>(context_->scratch_of(measure.bytes())));
    __nv_bfloat16* x16 = fp32 ? nullptr : carve.take<__nv_bfloat16>(x.size());
    void** pointers = carve.take<void*>(tile_pointer_count(x.batch, tiles));
    if (fp32) {
      symmetric_product(x.data, x.batch, x.rows, x.cols, side, alpha, beta, c.data, tiles, pointers);
      return;
    }
    to_bf16(x.span(), x16);
    symmetric_product(x16, x.batch, x.rows, x.cols, side, alpha, beta, c.data, tiles, pointers);
  }

  void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y) {
    if (y.empty()) return;
    const auto n = static_cast<std::int64_t>(y.size());
    kernels::axpby_kernel<float>
        <<<kernels::grid_for(n), kernels::kThreads, 0, context_->stream>>>(n, alpha, x.data(), beta, y.data());
    cuda_check(cudaGetLastError());
  }

  // Muon's decay and apply, W ← decay·W − (lr·scale)·O, with lr and decay read on the device.
  void update(std::span<float> w, std::span<const float> o, UpdateStep s) { update(w, o.data(), s); }
  // The same from a bf16 update, beyond the concept: for callers that keep O in bf16.
  template <class X>
  void update(std::span<float> w, const X* o, UpdateStep s) {
    if (w.empty()) return;
    const auto n = static_cast<std::int64_t>(w.size());
    kernels::update_kernel<X>
        <<<kernels::grid_for(n), kernels::kThreads, 0, context_->stream>>>(n, s.scale, s.values, o, w.data());
    cuda_check(cudaGetLastError());
  }

  // Per matrix, on the device: ‖X‖_F (kernels/norms.cuh), then X ← X·(1/(‖X‖+ε)) or
  // X·(1/max(‖X‖, ε)); the factors stay on the device and feed the scaling kernel directly.
  void normalize(MatrixStack<float> x, float eps, NormEps mode) {
    if (x.size() == 0) return;
    const int parts = kernels::norm_parts(x.matrix_size());
    detail::Carver measure;
    (void)measure.take<double>(x.batch * parts);
    (void)measure.take<float>(x.batch);
    detail::Carver carve(static_cast<char*>(context_->scratch_of(measure.bytes())));
    double* partial = carve.take<double>(x.batch * parts);
    float* inverse = carve.take<float>(x.batch);
    inverse_norms(x.as_const(), eps, mode, partial, inverse);
    scale_matrices(x.data, x.batch, x.matrix_size(), inverse, x.data);
  }

  // Optional capability (muon/orthogonalize.hpp, RunsNewtonSchulz): the whole Newton–Schulz of a
  // stack with bf16 storage, as the references run it. X is normalised on the device and cast to
  // bf16 in one pass; every iteration is three cuBLAS calls with the epilogues in α/β:
  //   A = X·Xᵀ (symmetric: tile pairs + mirror); B = c·A·A + b·A (A·A = A·Aᵀ, symmetric too, onto
  //   a copy of A); X' = a·X + B·X (onto a copy of X);
  // and X is cast back to fp32 at the end. X, A and B stay in bf16 between the products (the
  // portable path rounds fp32 buffers to bf16 before every product instead). Tall matrices
  // iterate on Xᵀ·X and multiply from the right, with no transposition. Returns false, doing
  // nothing, in fp32 precision and for the shapes `options` sends to Gram Newton–Schulz: the
  // portable path runs those. Stacks run in chunks of ns_batch_limit matrices.
  [[nodiscard]] bool takes_newton_schulz(std::int64_t rows, std::int64_t cols, const NsOptions& o) const {
    return options_.ns_precision != NsPrecision::fp32 && !uses_gram_ns(o, rows, cols);
  }
  void newton_schulz(MatrixStack<float> x, const NsOptions& o) {
    const std::int64_t chunk = ns_batch_limit(x.rows, x.cols);
    for (std::int64_t k = 0; k < x.batch; k += chunk)
      newton_schulz_chunk(MatrixStack<float>{x.matrix(k), std::min(chunk, x.batch - k), x.rows, x.cols}, o);
  }

  // Optional capability (muon/orthogonalize.hpp, LimitsNsBatch): the matrices per batched call,
  // at most 65535 (the per-matrix kernels put the matrix index in gridDim.y or z).
  [[nodiscard]] std::int64_t ns_batch_limit(std::int64_t rows, std::int64_t cols) const {
    return std::clamp<std::int64_t>(options_.ns_batch_elements / std::max<std::int64_t>(1, rows * cols), 1, 65535);
  }

  void momentum(std::span<float> m, std::span<const float> g, MomentumStep s, std::span<float> u) {
    if (m.empty()) return;
    const auto n = static_cast<std::int64_t>(m.size());
    const float gain = s.form == MomentumForm::sum ? 1.0f : 1.0f - s.mu;  // weight of G in the buffer
    kernels::momentum_kernel<float><<<kernels::grid_for(n), kernels::kThreads, 0, context_->stream>>>(
        n, m.data(), g.data(), s.mu, gain, s.values, s.nesterov, u.data());
    cuda_check(cudaGetLastError());
  }

  void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v, AdamWStep s) {
    const kernels::AdamWTensor t{w.data(), g.data(), m.data(), v.data(), static_cast<std::int64_t>(w.size())};
    adamw_many(std::span(&t, 1), s);
  }

  // AdamW on many tensors with the same hyper-parameters, in as few launches as possible
  // (kernels/adamw.cuh). Beyond the concept.
  void adamw_many(std::span<const kernels::AdamWTensor> tensors, AdamWStep s) {
    kernels::launch_adamw(tensors, {s.beta1, s.beta2, s.eps}, s.values, context_->stream);
  }

  // Σ x² in double. The host needs the value, so this synchronises the stream: the one
  // synchronisation the optimizer's step makes (per gradient, in check_gradients).
  [[nodiscard]] double sum_squares(std::span<const float> x) {
    if (x.empty()) return 0.0;
    const auto n = static_cast<std::int64_t>(x.size());
    const int parts = kernels::norm_parts(n);
    detail::Carver measure;
    (void)measure.take<double>(parts);
    (void)measure.take<double>(1);
    detail::Carver carve(static_cast<char*>(context_->scratch_of(measure.bytes())));
    double* partial = carve.take<double>(parts);
    double* total = carve.take<double>(1);
    kernels::sum_squares_partial_kernel<float, kernels::kThreads>
        <<<dim3(static_cast<unsigned>(parts), 1), kernels::kThreads, 0, context_->stream>>>(x.data(), n, partial);
    cuda_check(cudaGetLastError());
    kernels::finish_norms_kernel<kernels::kThreads>
        <<<1, kernels::kThreads, 0, context_->stream>>>(partial, parts, total, nullptr, 0.0f, false);
    cuda_check(cudaGetLastError());
    double result = 0.0;
    cuda_check(cudaMemcpyAsync(&result, total, sizeof(double), cudaMemcpyDeviceToHost, context_->stream));
    cuda_check(cudaStreamSynchronize(context_->stream));
    return result;
  }

  // *flag ← 1 on the device if x holds a NaN or Inf, else leaves it; clear it first with
  // clear_flag. No host synchronisation: a guard that a captured graph can carry.
  void flag_non_finite(std::span<const float> x, int* flag) {
    if (x.empty()) return;
    const auto n = static_cast<std::int64_t>(x.size());
    kernels::flag_non_finite_kernel<float>
        <<<kernels::grid_for(n), kernels::kThreads, 0, context_->stream>>>(n, x.data(), flag);
    cuda_check(cudaGetLastError());
  }
  void clear_flag(int* flag) { cuda_check(cudaMemsetAsync(flag, 0, sizeof(int), context_->stream)); }

  // Copies between device and host memory; both wait for the copy (the host buffer may go away).
  void to_host(std::span<const float> x, std::span<float> host) {
    if (x.empty()) return;
    cuda_check(cudaMemcpyAsync(host.data(), x.data(), x.size_bytes(), cudaMemcpyDeviceToHost, context_->stream));
    cuda_check(cudaStreamSynchronize(context_->stream));
  }
  void from_host(std::span<const float> host, std::span<float> y) {
    if (host.empty()) return;
    cuda_check(
        cudaMemcpyAsync(y.data(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice, context_->stream));
    cuda_check(cudaStreamSynchronize(context_->stream));
  }

  // The step block's copy from pinned memory (allocate_host), in stream order. Outside a capture
  // it waits, so the host may refill the memory for the next step at once; inside a capture it is
  // the graph's memcpy node, and each replay copies what the host wrote before launching it.
  void upload(std::span<const float> host, std::span<float> y) {
    if (host.empty()) return;
    cuda_check(
        cudaMemcpyAsync(y.data(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice, context_->stream));
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    cuda_check(cudaStreamIsCapturing(context_->stream, &status));
    if (status == cudaStreamCaptureStatusNone) cuda_check(cudaStreamSynchronize(context_->stream));
  }

  // At least `bytes` of the backend's scratch arena (device memory, 256-byte aligned), valid until
  // the next backend operation, which may reuse it: work on the backend's stream only. Growing
  // it allocates, so call it before a graph capture with the largest size the capture needs.
  [[nodiscard]] void* scratch(std::size_t bytes) { return context_->scratch_of(bytes); }
  // The arena's size, and the outgrown arenas kept because a graph captured while they were
  // current may still use them (an arena no capture saw is freed as soon as it is outgrown).
  [[nodiscard]] std::size_t scratch_bytes() const { return context_->scratch.bytes(); }
  [[nodiscard]] std::size_t retired_scratch_count() const { return context_->scratch.retired_count(); }
  // Frees those arenas, in stream order: call it once the graphs captured before the arena last
  // grew are destroyed (or will not be launched again).
  void release_retired_scratch() { context_->scratch.release_retired(context_->stream); }

 private:
  // newton_schulz on at most ns_batch_limit matrices.
  void newton_schulz_chunk(MatrixStack<float> x, const NsOptions& o) {
    if (x.size() == 0) return;
    const detail::BlasMathGuard math = context_->bind();
    const bool wide = x.rows <= x.cols;
    const std::int64_t n = std::min(x.rows, x.cols), nn = n * n, xs = x.matrix_size(), batch = x.batch;
    const int tiles = o.symmetric_products ? symmetric_tiles(n) : 1;
    const int parts = kernels::norm_parts(xs);
    detail::Carver measure;
    (void)measure.take<double>(batch * parts);
    (void)measure.take<float>(batch);
    for (int i = 0; i < 2; ++i) (void)measure.take<__nv_bfloat16>(x.size());
    for (int i = 0; i < 2; ++i) (void)measure.take<__nv_bfloat16>(batch * nn);
    (void)measure.take<void*>(tile_pointer_count(batch, tiles));
    detail::Carver carve(static_cast<char*>(context_->scratch_of(measure.bytes())));
    double* partial = carve.take<double>(batch * parts);
    float* inverse = carve.take<float>(batch);
    __nv_bfloat16* cur = carve.take<__nv_bfloat16>(x.size());
    __nv_bfloat16* nxt = carve.take<__nv_bfloat16>(x.size());
    __nv_bfloat16* gram16 = carve.take<__nv_bfloat16>(batch * nn);
    __nv_bfloat16* poly16 = carve.take<__nv_bfloat16>(batch * nn);
    void** pointers = carve.take<void*>(tile_pointer_count(batch, tiles));

    inverse_norms(x.as_const(), static_cast<float>(o.eps / o.schedule.norm_scale), o.eps_mode, partial, inverse);
    scale_matrices(x.data, batch, xs, inverse, cur);
    const GramSide side = wide ? GramSide::rows : GramSide::cols;
    for (int k = 0; k < o.steps; ++k) {
      const NsCoefficients t = detail::iteration_triple(o, k);
      symmetric_product(cur, batch, x.rows, x.cols, side, 1.0f, 0.0f, gram16, tiles, pointers);
      // B·X with B = b·A + c·A²; for a cubic step (c = 0) that is b·(A·X), with no B.
      const __nv_bfloat16* poly = gram16;
      auto alpha = static_cast<float>(t.b);
      if (t.c != 0.0) {
        copy(poly16, gram16, batch * nn);
        symmetric_product(gram16, batch, n, n, GramSide::rows, static_cast<float>(t.c), static_cast<float>(t.b), poly16,
                          tiles, pointers);
        poly = poly16;
        alpha = 1.0f;
      }
      copy(nxt, cur, x.size());
      const auto a = static_cast<float>(t.a);
      // Column-major, X is Y = Xᵀ (cols×rows, ld cols). Wide: (B·X)ᵀ = Y·B (B symmetric);
      // tall: (X·B)ᵀ = B·Y. Either way the n×n factor has ld n and the result ld cols.
      const __nv_bfloat16* left = wide ? cur : poly;
      const __nv_bfloat16* right = wide ? poly : cur;
      cuda_check(cublasGemmStridedBatchedEx(
          context_->blas, CUBLAS_OP_N, CUBLAS_OP_N, blas_int(x.cols, "columns"), blas_int(x.rows, "rows"),
          blas_int(n, "small side"), &alpha, left, CUDA_R_16BF, blas_int(wide ? x.cols : n, "lda"), wide ? xs : nn,
          right, CUDA_R_16BF, blas_int(wide ? n : x.cols, "ldb"), wide ? nn : xs, &a, nxt, CUDA_R_16BF,
          blas_int(x.cols, "ldc"), xs, blas_int(batch, "batch"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      std::swap(cur, nxt);
    }
    const std::int64_t total = x.size();
    kernels::convert_kernel<__nv_bfloat16, float>
        <<<kernels::grid_for(total), kernels::kThreads, 0, context_->stream>>>(total, cur, x.data);
    cuda_check(cudaGetLastError());
  }

  static int blas_int(std::int64_t v, const char* what) { return detail::blas_int(v, what); }
  static cublasOperation_t op(Transpose t) { return t == Transpose::yes ? CUBLAS_OP_T : CUBLAS_OP_N; }
  static unsigned grid_y(std::int64_t batch) {
    if (batch > 65535) throw InvalidArgument("CudaBackend: stacks of more than 65535 matrices are not supported");
    return static_cast<unsigned>(batch);
  }

  // The number of tiles per side for a bf16 Gram of size n: 4 or 2 when n splits into tiles that
  // are multiples of 64 (aligned bf16 operands for the tensor cores) and at least
  // symmetric_tile_min; 1 (one full GEMM) otherwise.
  [[nodiscard]] int symmetric_tiles(std::int64_t n) const {
    for (const int tiles : {4, 2})
      if (n % (64 * tiles) == 0 && n / tiles >= options_.symmetric_tile_min) return tiles;
    return 1;
  }

  void to_bf16(std::span<const float> x, __nv_bfloat16* out) {
    const auto n = static_cast<std::int64_t>(x.size());
    kernels::convert_kernel<float, __nv_bfloat16>
        <<<kernels::grid_for(n), kernels::kThreads, 0, context_->stream>>>(n, x.data(), out);
    cuda_check(cudaGetLastError());
  }

  template <class T>
  void copy(T* to, const T* from, std::int64_t count) {
    cuda_check(cudaMemcpyAsync(to, from, static_cast<std::size_t>(count) * sizeof(T), cudaMemcpyDeviceToDevice,
                                    context_->stream));
  }

  // Writes 1/(‖X_k‖+ε) or 1/max(‖X_k‖, ε) to inverse[k]; partial holds batch·norm_parts doubles.
  void inverse_norms(MatrixStack<const float> x, float eps, NormEps mode, double* partial, float* inverse) {
    const int parts = kernels::norm_parts(x.matrix_size());
    kernels::sum_squares_partial_kernel<float, kernels::kThreads>
        <<<dim3(static_cast<unsigned>(parts), grid_y(x.batch)), kernels::kThreads, 0, context_->stream>>>(
            x.data, x.matrix_size(), partial);
    cuda_check(cudaGetLastError());
    kernels::finish_norms_kernel<kernels::kThreads>
        <<<static_cast<unsigned>(x.batch), kernels::kThreads, 0, context_->stream>>>(partial, parts, nullptr, inverse,
                                                                                     eps, mode == NormEps::max);
    cuda_check(cudaGetLastError());
  }

  template <class Y>
  void scale_matrices(const float* x, std::int64_t batch, std::int64_t matrix_size, const float* factor, Y* y) {
    kernels::scale_matrices_kernel<float, Y>
        <<<dim3(kernels::grid_for(matrix_size), grid_y(batch)), kernels::kThreads, 0, context_->stream>>>(
            x, matrix_size, factor, y);
    cuda_check(cudaGetLastError());
  }

  // Pointer-array entries symmetric_product needs (A, B and C arrays) for `tiles` per side.
  [[nodiscard]] std::int64_t tile_pointer_count(std::int64_t batch, int tiles) const {
    if (tiles == 1 || options_.tile_gemm != SymmetricTileGemm::pointer_array) return 0;
    return 3 * batch * tiles * (tiles + 1) / 2;
  }

  // C = α·X·Xᵀ + β·C (side rows) or α·Xᵀ·X + β·C (side cols) per matrix of a bf16 or fp32 stack
  // of rows×cols matrices, C (fp32 or bf16) symmetric n×n, fp32 accumulation. Row-major X is
  // column-major Xᵀ (ld = cols), so X·Xᵀ is op T·N on it and Xᵀ·X is op N·T. With tiles > 1 only
  // the tile pairs (P ≤ Q) of the column-major result are multiplied, the row-major lower
  // triangle, then mirrored (`pointers`: tile_pointer_count entries); with β ≠ 0 that needs C
  // symmetric, as the concept says. With one tile, a full GEMM: symmetric already. The tile pairs
  // go to cuBLAS as options_.tile_gemm says (pointer_array: `pointers` is used; strided_per_pair:
  // it may be null).
  template <class T, class C>
  void symmetric_product(const T* x, std::int64_t batch, std::int64_t rows, std::int64_t cols,
                         GramSide side, float alpha, float beta, C* c, int tiles, void** pointers) {
    const bool by_rows = side == GramSide::rows;
    const std::int64_t n = by_rows ? rows : cols, inner = by_rows ? cols : rows;
    const cublasOperation_t opa = by_rows ? CUBLAS_OP_T : CUBLAS_OP_N, opb = by_rows ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cudaDataType_t c_type = std::is_same_v<C, float> ? CUDA_R_32F : CUDA_R_16BF;
    const cudaDataType_t x_type = std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
    if (tiles == 1) {
      cuda_check(cublasGemmStridedBatchedEx(
          context_->blas, opa, opb, blas_int(n, "Gram size"), blas_int(n, "Gram size"), blas_int(inner, "inner size"),
          &alpha, x, x_type, blas_int(cols, "ldx"), rows * cols, x, x_type, blas_int(cols, "ldx"),
          rows * cols, &beta, c, c_type, blas_int(n, "ldc"), n * n, blas_int(batch, "batch"), CUBLAS_COMPUTE_32F,
          CUBLAS_GEMM_DEFAULT));
      return;
    }
    const std::int64_t t = n / tiles, pairs = std::int64_t{tiles} * (tiles + 1) / 2, entries = batch * pairs;
    const auto a_ptrs = const_cast<const void**>(pointers);
    const auto b_ptrs = const_cast<const void**>(pointers + entries);
    void** c_ptrs = pointers + 2 * entries;
    // Consecutive tiles of the operand: t columns of the column-major Xᵀ apart (t rows of X) for
    // X·Xᵀ, t rows of it (t columns of X) for Xᵀ·X.
    const std::int64_t tile_step = by_rows ? t * cols : t;
    if (options_.tile_gemm == SymmetricTileGemm::strided_per_pair) {
      // Pair (P, Q), P ≤ Q: the same operands and result tile as the pointer arrays' entries.
      for (int q = 0; q < tiles; ++q)
        for (int p = 0; p <= q; ++p)
          cuda_check(cublasGemmStridedBatchedEx(
              context_->blas, opa, opb, blas_int(t, "tile"), blas_int(t, "tile"), blas_int(inner, "inner size"),
              &alpha, x + p * tile_step, x_type, blas_int(cols, "ldx"), rows * cols, x + q * tile_step, x_type,
              blas_int(cols, "ldx"), rows * cols, &beta, c + p * t + q * t * n, c_type, blas_int(n, "ldc"), n * n,
              blas_int(batch, "batch"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      mirror_lower(c, n, batch);
      return;
    }
    kernels::tile_pair_pointers_kernel<T, C>
        <<<static_cast<unsigned>((entries + kernels::kThreads - 1) / kernels::kThreads), kernels::kThreads, 0,
           context_->stream>>>(x, rows * cols, tile_step, c, n * n, n, t, static_cast<int>(pairs), entries, a_ptrs,
                               b_ptrs, c_ptrs);
    cuda_check(cudaGetLastError());
    cuda_check(cublasGemmBatchedEx(
        context_->blas, opa, opb, blas_int(t, "tile"), blas_int(t, "tile"), blas_int(inner, "inner size"), &alpha,
        a_ptrs, x_type, blas_int(cols, "ldx"), b_ptrs, x_type, blas_int(cols, "ldx"), &beta, c_ptrs, c_type,
        blas_int(n, "ldc"), blas_int(entries, "tile pairs"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    mirror_lower(c, n, batch);
  }

  template <class T>
  void mirror_lower(T* c, std::int64_t n, std::int64_t batch) {
    const auto tiles = static_cast<unsigned>((n + kernels::kMirrorTile - 1) / kernels::kMirrorTile);
    kernels::mirror_lower_kernel<T>
        <<<dim3(tiles, tiles, grid_y(batch)), dim3(kernels::kMirrorTile, 8), 0, context_->stream>>>(c, n);
    cuda_check(cudaGetLastError());
  }

  CudaOptions options_;
  std::shared_ptr<detail::Context> context_;
};

static_assert(Backend<CudaBackend> && RunsNewtonSchulz<CudaBackend> && LimitsNsBatch<CudaBackend>);

}  // namespace muon
