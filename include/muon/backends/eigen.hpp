// muon/backends/eigen.hpp: the CPU backend, on Eigen 3.4.
//
// Models muon::Backend over host memory. fp32 matrix products go to cpu/blas.hpp: OpenBLAS's
// GEMM and SYRK when it is built in, whose SYRK computes X·Xᵀ in about 0.64× a GEMM's time
// (docs/performance.md), else Eigen's GEMM and rank update. `gram` fills one triangle and mirrors
// it. Its members differ with MUON_HAS_OPENBLAS and MUON_HAS_ONEDNN, so the class lives in
// cpu/blas.hpp's configuration-named inline namespace (see there): still `muon::EigenBackend`.
// The elementwise operations run the loops of cpu/elementwise.hpp, compiled for every x86 level
// and chosen for this CPU at run time (a backend can be pinned to a level), parallelised with
// OpenMP where it is enabled.
//
//   muon::Optimizer<muon::EigenBackend> opt(params, muon::Options{.lr = 4.2e-4});
//   muon::EigenBackend portable({.isa = muon::CpuIsa::baseline, .ns_precision = muon::NsPrecision::fp32});
#pragma once

#include <algorithm>
#include <cmath>
#include <new>
#include <span>
#include <vector>

#include "muon/backend.hpp"
#include "muon/cpu/blas.hpp"
#include "muon/cpu/elementwise.hpp"
#include "muon/cpu/isa.hpp"
#include "muon/error.hpp"
#include "muon/orthogonalize.hpp"

#ifdef MUON_HAS_ONEDNN
#include <memory>

#include "muon/cpu/bf16_matmul.hpp"
#endif

namespace muon {

struct EigenOptions {
  // The level of the elementwise loops: by default the widest this CPU supports.
  CpuIsa isa = detected_cpu_isa();
  // The products' operand precision. `automatic` is bf16 where the CPU multiplies bf16 in
  // hardware (cpu_has_bf16_instructions) and oneDNN is built in (MUON_ENABLE_ONEDNN), else fp32.
  // bf16 rounds each product's operands to bf16 (nearest even) and accumulates in fp32.
  NsPrecision ns_precision = NsPrecision::automatic;
  // bf16 `gram` computes the lower tile pairs of the n×n result only, with tiles of side n/4 or
  // n/2 when that side is at least this (smaller tiles lose more speed than the 25–37% of flops
  // they save; measured in docs/performance.md), else the whole product.
  std::int64_t symmetric_tile_min = 256;
};

inline namespace MUON_CPU_CONFIG {

class EigenBackend {
 public:
  EigenBackend() : EigenBackend(EigenOptions{}) {}
  explicit EigenBackend(EigenOptions options)
      : kernels_(&cpu::elementwise_kernels(options.isa)), tile_min_(options.symmetric_tile_min) {
    if (!cpu_supports(options.isa))
      throw InvalidArgument("EigenOptions.isa: this CPU does not support the instruction set '" +
                            std::string(to_string(options.isa)) +
                            "'; use muon::detected_cpu_isa() or CpuIsa::baseline");
    if (tile_min_ < 1) throw InvalidArgument("EigenOptions.symmetric_tile_min must be >= 1");
#ifdef MUON_HAS_ONEDNN
    const bool bf16 = options.ns_precision == NsPrecision::bf16 ||
                      (options.ns_precision == NsPrecision::automatic && cpu_has_bf16_instructions());
    if (bf16) {
      // Fail here rather than in the middle of a step: automatic falls back to fp32, a forced
      // bf16 is an error.
      try {
        auto matmul = std::make_shared<cpu::Bf16Matmul>();
        (void)matmul->kernel_name({1, 32, 32, 32});
        bf16_ = std::move(matmul);
      } catch (const dnnl::error& e) {
        if (options.ns_precision == NsPrecision::bf16)
          throw InvalidArgument(std::string("EigenOptions.ns_precision: oneDNN has no bf16 matmul here (") + e.what() +
                                "); use NsPrecision::fp32");
      }
    }
#else
    if (options.ns_precision == NsPrecision::bf16)
      throw InvalidArgument("EigenOptions.ns_precision: bf16 products need oneDNN; build with MUON_ENABLE_ONEDNN "
                            "(Debian: libdnnl-dev) or use NsPrecision::fp32");
#endif
  }

  [[nodiscard]] CpuIsa isa() const { return kernels_->isa; }

  // How many tiles per side a bf16 `gram` of an n×n result uses: 4 or 2 when the tile side is a
  // multiple of 16 and at least EigenOptions::symmetric_tile_min, else 1 (the whole product).
  // Eight tiles of 256 lost to four of 512 at n = 2048 (docs/performance.md).
  [[nodiscard]] std::int64_t gram_tiles(std::int64_t n) const {
    for (const std::int64_t t : {4, 2})
      if (n % (16 * t) == 0 && n / t >= tile_min_) return t;
    return 1;
  }

  // The precision the products run in: fp32 or bf16, never automatic.
  [[nodiscard]] NsPrecision ns_precision() const {
#ifdef MUON_HAS_ONEDNN
    if (bf16_) return NsPrecision::bf16;
#endif
    return NsPrecision::fp32;
  }

  // Cache-line aligned, so the state's vectors never straddle two lines (docs/performance.md).
  template <class T>
  struct CacheLineAllocator {
    using value_type = T;
    static constexpr std::align_val_t kAlignment{64};
    CacheLineAllocator() = default;
    template <class U>
    explicit CacheLineAllocator(const CacheLineAllocator<U>&) {}
    [[nodiscard]] T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlignment)); }
    void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, kAlignment); }
    bool operator==(const CacheLineAllocator&) const = default;
  };

  // Host memory, zero-filled, cache-line aligned.
  class Buffer {
   public:
    Buffer() = default;
    explicit Buffer(std::int64_t n) : data_(static_cast<std::size_t>(n), 0.0f) {}
    [[nodiscard]] std::span<float> span() { return data_; }
    [[nodiscard]] std::span<const float> span() const { return data_; }

   private:
    std::vector<float, CacheLineAllocator<float>> data_;
  };

  [[nodiscard]] Buffer allocate(std::int64_t n) { return Buffer(n); }
  // The backend's memory is the host's: the staging for the step block is a Buffer too.
  using HostBuffer = Buffer;
  [[nodiscard]] HostBuffer allocate_host(std::int64_t n) { return Buffer(n); }

  void gemm(float alpha, MatrixStack<const float> a, Transpose ta, MatrixStack<const float> b,
            Transpose tb, float beta, MatrixStack<float> c) {
    const std::int64_t m = ta == Transpose::yes ? a.cols : a.rows;
    const std::int64_t n = tb == Transpose::yes ? b.rows : b.cols;
#ifdef MUON_HAS_ONEDNN
    if (bf16_) return gemm_bf16(alpha, a, ta, b, tb, beta, c, m, n);
#endif
    const std::int64_t k = ta == Transpose::yes ? a.rows : a.cols;
    for (std::int64_t i = 0; i < c.batch; ++i)
      cpu::gemm(ta, tb, m, n, k, alpha, a.matrix(i), a.cols, b.matrix(i), b.cols, beta, c.matrix(i), n);
  }

  void gram(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c) {
#ifdef MUON_HAS_ONEDNN
    if (bf16_) return gram_bf16(alpha, x, side, beta, c);
#endif
    const bool rows = side == GramSide::rows;
    for (std::int64_t i = 0; i < c.batch; ++i) {
      cpu::syrk_lower(rows ? Transpose::no : Transpose::yes, c.rows, rows ? x.cols : x.rows, alpha, x.matrix(i),
                      x.cols, beta, c.matrix(i), c.cols);
      mirror_lower(c.matrix(i), c.rows);
    }
  }

  void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y) {
    for_blocks(y.size(), [&](std::int64_t begin, std::int64_t len) {
      kernels_->axpby(alpha, x.data() + begin, beta, y.data() + begin, len);
    });
  }

  void normalize(MatrixStack<float> x, float eps, NormEps mode) {
    for (std::int64_t i = 0; i < x.batch; ++i) {
      const std::span<float> m(x.matrix(i), static_cast<std::size_t>(x.matrix_size()));
      const double norm = std::sqrt(sum_squares(m));
      const double denom = mode == NormEps::add ? norm + eps : std::max(norm, double{eps});
      const auto inv = static_cast<float>(1.0 / denom);
      for_blocks(m.size(), [&](std::int64_t begin, std::int64_t len) { kernels_->scale(m.data() + begin, len, inv); });
    }
  }

  // NorMuon's per-row second moment and normalisation (RowNormStep), a row per work item; each
  // row's Σx² and scaling run the vector loops, so the result does not depend on the threads.
  void normalize_rows(MatrixStack<float> x, std::span<float> v, RowNormStep s) {
    const std::int64_t rows = x.batch * x.rows;
    if (std::ssize(v) != rows)
      throw ShapeMismatch("normalize_rows: " + std::to_string(v.size()) + " second moments for " +
                          std::to_string(rows) + " rows");
    if (x.cols == 0) return;
#pragma omp parallel for schedule(static) if (x.size() > kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) {
      float* row = x.data + r * x.cols;
      float& vr = v[static_cast<std::size_t>(r)];
      const double mean = kernels_->sum_squares(row, x.cols) / static_cast<double>(x.cols);
      vr = static_cast<float>(double{s.beta2} * vr + (1.0 - double{s.beta2}) * mean);
      kernels_->scale(row, x.cols, static_cast<float>(1.0 / (std::sqrt(double{vr}) + s.eps)));
    }
  }
  void momentum(std::span<float> m, std::span<const float> g, MomentumStep s, std::span<float> u) {
    const cpu::MomentumFactors f{.mu = s.mu,
                                 .gain = s.form == MomentumForm::sum ? 1.0f : 1.0f - s.mu,  // weight of G in M
                                 .grad_scale = s.values->grad_scale,
                                 .nesterov = s.nesterov};
    for_blocks(m.size(), [&](std::int64_t begin, std::int64_t len) {
      kernels_->momentum(m.data() + begin, g.data() + begin, u.data() + begin, len, f);
    });
  }

  // torch's single-tensor AdamW, in its order: decay, moments, then
  // W -= (lr / bc1) · m / (√v / √bc2 + ε).
  void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v,
             AdamWStep s) {
    const StepValues& t = *s.values;
    const cpu::AdamWFactors f{.beta1 = s.beta1,
                              .beta2 = s.beta2,
                              .eps = s.eps,
                              .step_size = t.adamw_step_size,
                              .decay = t.decay,
                              .bc2_sqrt = t.adamw_bc2_sqrt,
                              .grad_scale = t.grad_scale};
    for_blocks(w.size(), [&](std::int64_t begin, std::int64_t len) {
      kernels_->adamw(w.data() + begin, g.data() + begin, m.data() + begin, v.data() + begin, len, f);
    });
  }

  void update(std::span<float> w, std::span<const float> o, UpdateStep s) {
    const StepValues& t = *s.values;
    axpby(-static_cast<float>(t.lr * s.scale), o, t.decay, w);
  }

  // Newton–Schulz takes a stack in chunks of about 16 MiB of matrices, so that one matrix's
  // iterations run in cache rather than streaming the whole stack through every operation.
  [[nodiscard]] std::int64_t ns_batch_limit(std::int64_t rows, std::int64_t cols) const {
    return std::max<std::int64_t>(1, (std::int64_t{1} << 22) / (rows * cols));
  }

  // Blocks of a fixed size, added in order: the same sum whatever the number of threads.
  [[nodiscard]] double sum_squares(std::span<const float> x) {
    const auto n = static_cast<std::int64_t>(x.size());
    const std::int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
    if (blocks <= 1) return kernels_->sum_squares(x.data(), n);
    std::vector<double> partial(static_cast<std::size_t>(blocks));
#pragma omp parallel for if (n > kParallelMin)
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t begin = b * kSumBlock;
      partial[static_cast<std::size_t>(b)] = kernels_->sum_squares(x.data() + begin, std::min(kSumBlock, n - begin));
    }
    double total = 0.0;
    for (const double p : partial) total += p;
    return total;
  }

  void to_host(std::span<const float> x, std::span<float> host) {
    std::copy(x.begin(), x.end(), host.begin());
  }
  void from_host(std::span<const float> host, std::span<float> y) {
    std::copy(host.begin(), host.end(), y.begin());
  }
  void upload(std::span<const float> host, std::span<float> y) { from_host(host, y); }

 private:
  static constexpr std::int64_t kParallelMin = 1 << 16;  // below this, threads cost more than they save
  static constexpr std::int64_t kBlock = 1 << 14;        // elements per OpenMP work item
  static constexpr std::int64_t kSumBlock = 1 << 16;     // sum_squares' fixed blocks

  // Runs fn(begin, length) over [0, n) in blocks, on OpenMP's threads when n is large.
  template <class Fn>
  static void for_blocks(std::size_t size, Fn fn) {
    const auto n = static_cast<std::int64_t>(size);
    if (n <= kParallelMin) {
      if (n > 0) fn(0, n);
      return;
    }
#pragma omp parallel for schedule(static)
    for (std::int64_t begin = 0; begin < n; begin += kBlock) fn(begin, std::min(kBlock, n - begin));
  }

  // Copies the lower triangle of a row-major n×n matrix onto the upper one, in row tiles.
  void mirror_lower(float* c, std::int64_t n) const {
    constexpr std::int64_t kTile = 64;  // rows per task, a multiple of the kernels' 16-row blocks
#pragma omp parallel for schedule(dynamic) if (n >= 512)
    for (std::int64_t ib = 0; ib < n; ib += kTile) kernels_->mirror_lower(c, n, ib, std::min(ib + kTile, n));
  }

#ifdef MUON_HAS_ONEDNN
  using Bf16 = std::vector<std::uint16_t>;

  // The bf16 bit patterns of x, in `out` (grown as needed).
  const std::uint16_t* rounded_to_bf16(std::span<const float> x, Bf16& out) {
    if (out.size() < x.size()) out.resize(x.size());
    for_blocks(x.size(), [&](std::int64_t begin, std::int64_t len) {
      kernels_->to_bf16(x.data() + begin, out.data() + begin, len);
    });
    return out.data();
  }

  // op(X) of a row-major rows×cols stack as a strided bf16 stack.
  static cpu::StridedStack<const std::uint16_t> operand(const std::uint16_t* data, MatrixStack<const float> x,
                                                       Transpose t) {
    return t == Transpose::no ? cpu::StridedStack<const std::uint16_t>{data, x.matrix_size(), x.cols, 1}
                              : cpu::StridedStack<const std::uint16_t>{data, x.matrix_size(), 1, x.cols};
  }

  void gemm_bf16(float alpha, MatrixStack<const float> a, Transpose ta, MatrixStack<const float> b, Transpose tb,
                 float beta, MatrixStack<float> c, std::int64_t m, std::int64_t n) {
    if (c.size() == 0) return;
    const std::int64_t k = ta == Transpose::yes ? a.rows : a.cols;
    const std::uint16_t* a16 = rounded_to_bf16(a.span(), bf16_a_);
    const bool same = a.data == b.data && a.size() == b.size();  // X·Xᵀ and A·A round once
    const std::uint16_t* b16 = same ? a16 : rounded_to_bf16(b.span(), bf16_b_);
    bf16_->run({c.batch, m, n, k}, alpha, operand(a16, a, ta), operand(b16, b, tb), beta,
               {c.data, c.matrix_size(), c.cols, 1});
  }

  // C = α·L·Lᵀ + β·C with L = X (side rows) or Xᵀ (side cols), n×k. With T tiles of side t = n/T,
  // the lower tile pairs C[i][i−d] = L_i·L_{i−d}ᵀ of one diagonal d form a strided batch of T − d
  // products: T calls per matrix for T(T+1)/2 of the T² tiles. Then the upper triangle is mirrored.
  void gram_bf16(float alpha, MatrixStack<const float> x, GramSide side, float beta, MatrixStack<float> c) {
    if (c.size() == 0) return;
    const bool rows = side == GramSide::rows;
    const std::int64_t n = c.rows, k = rows ? x.cols : x.rows;
    const std::int64_t rs = rows ? x.cols : 1, cs = rows ? 1 : x.cols;  // L(i, j) at i·rs + j·cs
    const std::uint16_t* x16 = rounded_to_bf16(x.span(), bf16_a_);
    const std::int64_t tiles = gram_tiles(n);
    if (tiles == 1) {
      bf16_->run({c.batch, n, n, k}, alpha, {x16, x.matrix_size(), rs, cs}, {x16, x.matrix_size(), cs, rs}, beta,
                 {c.data, c.matrix_size(), n, 1});
    } else {
      const std::int64_t t = n / tiles;
      for (std::int64_t b = 0; b < c.batch; ++b) {
        const std::uint16_t* xb = x16 + b * x.matrix_size();
        for (std::int64_t d = 0; d < tiles; ++d)
          bf16_->run({tiles - d, t, t, k}, alpha, {xb + d * t * rs, t * rs, rs, cs}, {xb, t * rs, cs, rs}, beta,
                     {c.matrix(b) + d * t * n, t * n + t, n, 1});
      }
    }
    for (std::int64_t b = 0; b < c.batch; ++b) mirror_lower(c.matrix(b), n);
  }

  std::shared_ptr<cpu::Bf16Matmul> bf16_;  // set when the products run in bf16
  Bf16 bf16_a_, bf16_b_;                   // the rounded operands
#endif
  const cpu::ElementwiseKernels* kernels_;
  std::int64_t tile_min_;
};

}  // namespace MUON_CPU_CONFIG

static_assert(Backend<EigenBackend> && LimitsNsBatch<EigenBackend>);

}  // namespace muon
