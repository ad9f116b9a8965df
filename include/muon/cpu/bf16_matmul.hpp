// muon/cpu/bf16_matmul.hpp: batched bf16 matrix products with fp32 accumulation on the CPU,
// through oneDNN's matmul (Debian's libdnnl-dev).
//
// oneDNN picks its kernel at run time (AMX on Sapphire Rapids, AVX512_BF16 on Zen 4 and Cooper
// Lake), as OpenBLAS does for fp32; Debian's OpenBLAS is built without its bf16 GEMM (no
// cblas_sbgemm in libopenblas.so.0), so oneDNN is the engine (docs/performance.md). Operands are
// bf16 bit patterns with any strides; results are fp32, C = α·A·B + β·C.
//
//   muon::cpu::Bf16Matmul mm;
//   mm.run({.batch = 1, .m = n, .n = n, .k = m}, 1.0f, a, b, 0.0f, c);
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <compare>
#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "muon/error.hpp"

namespace muon::cpu {

// A stack of matrices in memory: element (b, i, j) at data[b·batch_stride + i·row_stride + j·col_stride].
template <class T>
struct StridedStack {
  T* data;
  std::int64_t batch_stride, row_stride, col_stride;
};

struct MatmulShape {
  std::int64_t batch, m, n, k;
};

class Bf16Matmul {
 public:
  Bf16Matmul() : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

  // C[b] = α·A[b]·B[b] + β·C[b] with A[b] m×k and B[b] k×n in bf16, C[b] m×n in fp32.
  // β = 0: C is not read.
  void run(MatmulShape s, float alpha, StridedStack<const std::uint16_t> a, StridedStack<const std::uint16_t> b,
           float beta, StridedStack<float> c) {
    try {
      const Key key{s.batch, s.m, s.n, s.k, a.batch_stride, a.row_stride, a.col_stride, b.batch_stride, b.row_stride,
                    b.col_stride, c.batch_stride, c.row_stride, c.col_stride, alpha, beta};
      auto it = primitives_.find(key);
      if (it == primitives_.end()) {
        if (primitives_.size() >= kMaxPrimitives) primitives_.clear();
        it = primitives_.emplace(key, make_primitive(key)).first;
      }
      const auto& [pd, primitive] = it->second;
      dnnl::memory am(pd.src_desc(), engine_, const_cast<std::uint16_t*>(a.data));
      dnnl::memory bm(pd.weights_desc(), engine_, const_cast<std::uint16_t*>(b.data));
      dnnl::memory cm(pd.dst_desc(), engine_, c.data);
      primitive.execute(stream_, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
      stream_.wait();
    } catch (const dnnl::error& e) {
      throw Error(std::string("oneDNN bf16 matmul failed (") + e.what() + "); use NsPrecision::fp32 on this CPU");
    }
  }

  // The kernel oneDNN runs for an m×k by k×n product: "brg:avx512_core_bf16" or
  // "brg:avx512_core_amx" where the CPU has bf16 instructions, another name where it emulates.
  [[nodiscard]] std::string kernel_name(MatmulShape s) const {
    return make_primitive({s.batch, s.m, s.n, s.k, s.m * s.k, s.k, 1, s.k * s.n, s.n, 1, s.m * s.n, s.n, 1, 1.0f, 0.0f})
        .first.impl_info_str();
  }

 private:
  // Everything a primitive is compiled for; oneDNN's own cache would still rebuild the
  // descriptor on every call, about 0.5 ms each (docs/performance.md).
  struct Key {
    std::int64_t batch, m, n, k, a0, a1, a2, b0, b1, b2, c0, c1, c2;
    float alpha, beta;
    auto operator<=>(const Key&) const = default;
  };
  using Compiled = std::pair<dnnl::matmul::primitive_desc, dnnl::matmul>;
  static constexpr std::size_t kMaxPrimitives = 256;

  [[nodiscard]] Compiled make_primitive(const Key& k) const {
    using dims = dnnl::memory::dims;
    using dt = dnnl::memory::data_type;
    // A single matrix is described in 2-D: a 3-D descriptor with one batch sends some shapes to
    // oneDNN's reference kernel.
    const auto desc = [&](std::int64_t rows, std::int64_t cols, dt type, std::int64_t s0, std::int64_t s1,
                          std::int64_t s2) {
      return k.batch == 1 ? dnnl::memory::desc(dims{rows, cols}, type, dims{s1, s2})
                          : dnnl::memory::desc(dims{k.batch, rows, cols}, type, dims{s0, s1, s2});
    };
    dnnl::primitive_attr attr;
    if (k.alpha != 1.0f) attr.set_output_scales(0, {k.alpha});
    if (k.beta != 0.0f) {
      dnnl::post_ops ops;
      ops.append_sum(k.beta);
      attr.set_post_ops(ops);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(desc(k.m, k.k, dt::bf16, k.a0, k.a1, k.a2),
                                                       desc(k.k, k.n, dt::bf16, k.b0, k.b1, k.b2),
                                                       desc(k.m, k.n, dt::f32, k.c0, k.c1, k.c2)),
                                    attr, engine_);
    return {pd, dnnl::matmul(pd)};
  }

  dnnl::engine engine_;
  dnnl::stream stream_;
  std::map<Key, Compiled> primitives_;
};

}  // namespace muon::cpu
