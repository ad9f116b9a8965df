// moonlight/mapped_weights.hpp: a Hugging Face checkpoint's weights for inference, read where the
// checkpoint keeps them.
//
// The safetensors files stay memory-mapped; BF16 and F16 matrices are read by the products in
// their stored dtype (layers/half_matrix.hpp) and F32 tensors in place, so the resident memory of
// a loaded model is about the checkpoint's size, and loading reads only the headers. Widened to
// fp32 copies: the vectors (norms, the router's correction bias: a few KiB per layer), kv_b_proj
// (the absorbed attention path multiplies by it both ways; 0.7% of Moonlight-16B in bf16), F64 tensors
// and any tensor whose data is not aligned for its type. The checkpoint is checked as
// Weights::load checks it.
//
//   moonlight::MappedWeights w = moonlight::MappedWeights::open(dir, config);
//   moonlight::layers::Weight<float> q = w.weight("model.layers.0.self_attn.q_proj.weight");
#pragma once

#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "moonlight/config.hpp"
#include "moonlight/layers/half_matrix.hpp"
#include "moonlight/layers/linear.hpp"
#include "moonlight/weights.hpp"
#include "muon/error.hpp"
#include "muon/io/safetensors.hpp"

namespace moonlight {

class MappedWeights {
 public:
  static MappedWeights open(const std::filesystem::path& dir, const Config& c) {
    namespace st = muon::safetensors;
    MappedWeights out;
    out.files_ = detail::open_checkpoint(dir);
    const std::vector<TensorSpec> specs = tensor_layout(c);
    const std::vector<detail::LocatedTensor> located = detail::locate_tensors(out.files_, dir, specs);
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const TensorSpec& t = specs[i];
      const st::DType dtype = located[i].info->dtype;
      const std::byte* data = located[i].file->bytes(t.name).data();
      const std::int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1, cols = t.shape.back();
      layers::Weight<float> w{nullptr, nullptr, rows, cols};
      const bool matrix = t.shape.size() == 2 && t.name.find("kv_b_proj") == std::string::npos;
      const bool half = dtype == st::DType::BF16 || dtype == st::DType::F16;
      if (matrix && half && aligned<std::uint16_t>(data)) {
        w.stored = {reinterpret_cast<const std::uint16_t*>(data),
                    dtype == st::DType::BF16 ? layers::Half::bf16 : layers::Half::f16, rows, cols};
      } else if (dtype == st::DType::F32 && aligned<float>(data)) {
        w.value = reinterpret_cast<const float*>(data);
      } else {
        const std::vector<float>& copy = out.owned_.emplace_back(located[i].file->to_float(t.name));
        out.owned_bytes_ += copy.size() * sizeof(float);
        w.value = copy.data();
      }
      out.weights_.emplace(t.name, w);
    }
    return out;
  }

  // The weight named `name`, as the layers read it.
  [[nodiscard]] layers::Weight<float> weight(std::string_view name) const {
    const auto it = weights_.find(name);
    if (it == weights_.end()) throw muon::InvalidArgument("no tensor named '" + std::string(name) + "' in this model");
    return it->second;
  }

  // Bytes of the fp32 copies made beside the mapping.
  [[nodiscard]] std::size_t owned_bytes() const { return owned_bytes_; }

 private:
  template <class T>
  static bool aligned(const std::byte* p) {
    return reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0;
  }

  detail::CheckpointFiles files_;  // keeps the mappings
  std::deque<std::vector<float>> owned_;
  std::map<std::string, layers::Weight<float>, std::less<>> weights_;
  std::size_t owned_bytes_ = 0;
};

}  // namespace moonlight
