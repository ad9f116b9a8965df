// moonlight/weights.hpp: the model's parameters in one flat fp32 buffer, under their Hugging Face
// names and [out, in] layout, and their load/save as HF safetensors checkpoints.
//
// `Weights` lays out every tensor a config implies (`tensor_layout`) back to back in one buffer:
// the forward pass reads named views of it, and `parameter_table` hands the same memory to the
// muon optimizer (with a gradient buffer of the same layout) for training. Checkpoints are read
// with muon's safetensors reader (memory-mapped, header validated): a single `model.safetensors`
// or shards listed in `model.safetensors.index.json`, in F32, BF16, F16 or F64, all widened to
// fp32. Every expected tensor must be present once with its exact shape, and no other tensor may
// be present; any deviation is a muon::FileError naming the tensor and the file.
//
//   moonlight::Config config = moonlight::Config::load(dir / "config.json");
//   moonlight::Weights w = moonlight::Weights::load(dir, config);
//   w.save(out_dir, config, {.dtype = moonlight::SaveDType::bf16, .max_shard_bytes = 5u << 30});
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moonlight/config.hpp"
#include "muon/error.hpp"
#include "muon/io/atomic_file.hpp"
#include "muon/io/json.hpp"
#include "muon/io/safetensors.hpp"
#include "muon/parameter.hpp"
#include "muon/tensor.hpp"

namespace moonlight {

struct TensorSpec {
  std::string name;   // Hugging Face name, e.g. "model.layers.3.mlp.experts.7.up_proj.weight"
  muon::Shape shape;  // Hugging Face layout; linear weights are [out, in]
  muon::Role role;
  std::size_t offset = 0;  // in floats, into the flat buffer
};

// Every tensor of a DeepseekV3ForCausalLM checkpoint for `c`, in model order.
inline std::vector<TensorSpec> tensor_layout(const Config& c) {
  std::vector<TensorSpec> out;
  const auto add = [&](std::string name, muon::Shape shape, muon::Role role) {
    out.push_back({std::move(name), std::move(shape), role});
  };
  const auto add_mlp = [&](const std::string& prefix, std::int64_t width) {
    add(prefix + "gate_proj.weight", {width, c.hidden_size}, muon::Role::matrix);
    add(prefix + "up_proj.weight", {width, c.hidden_size}, muon::Role::matrix);
    add(prefix + "down_proj.weight", {c.hidden_size, width}, muon::Role::matrix);
  };
  const std::int64_t heads = c.num_attention_heads;
  add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, muon::Role::embedding);
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {c.hidden_size}, muon::Role::norm);
    if (c.q_lora_rank) {
      add(p + "self_attn.q_a_proj.weight", {*c.q_lora_rank, c.hidden_size}, muon::Role::matrix);
      add(p + "self_attn.q_a_layernorm.weight", {*c.q_lora_rank}, muon::Role::norm);
      add(p + "self_attn.q_b_proj.weight", {heads * c.qk_head_dim(), *c.q_lora_rank}, muon::Role::matrix);
    } else {
      add(p + "self_attn.q_proj.weight", {heads * c.qk_head_dim(), c.hidden_size}, muon::Role::matrix);
    }
    add(p + "self_attn.kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size},
        muon::Role::matrix);
    add(p + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank}, muon::Role::norm);
    add(p + "self_attn.kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
        muon::Role::matrix);
    add(p + "self_attn.o_proj.weight", {c.hidden_size, heads * c.v_head_dim}, muon::Role::matrix);
    add(p + "post_attention_layernorm.weight", {c.hidden_size}, muon::Role::norm);
    if (c.is_moe_layer(l)) {
      add(p + "mlp.gate.weight", {c.n_routed_experts, c.hidden_size}, muon::Role::matrix);
      // Updated by the aux-loss-free balancing rule, not by gradients (docs/moonlight-architecture.md §6).
      add(p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, muon::Role::bias);
      for (std::int64_t e = 0; e < c.n_routed_experts; ++e) {
        add_mlp(p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate_size);
      }
      if (c.n_shared_experts > 0) add_mlp(p + "mlp.shared_experts.", c.shared_intermediate_size());
    } else {
      add_mlp(p + "mlp.", c.intermediate_size);
    }
  }
  add("model.norm.weight", {c.hidden_size}, muon::Role::norm);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, c.hidden_size}, muon::Role::head);
  return out;
}

enum class SaveDType { f32, bf16, f16 };

struct SaveOptions {
  SaveDType dtype = SaveDType::f32;
  std::uint64_t max_shard_bytes = 5ull << 30;  // transformers' default shard size is 5 GB
};

// fp32 → bf16, round to nearest even (as torch's .to(torch.bfloat16)); NaN stays NaN.
inline std::uint16_t float_to_bf16(float f) {
  const auto bits = std::bit_cast<std::uint32_t>(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  return static_cast<std::uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// fp32 → IEEE half, round to nearest even; beyond 65504 it is ±inf, NaN stays NaN.
inline std::uint16_t float_to_f16(float f) {
  const auto bits = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // from 65520, halfway to 2^16
  if (abs < 0x38800000u) {  // below 2^-14: a subnormal, in units of 2^-24 (exact scaling, rint is RNE)
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::nearbyint(std::bit_cast<float>(abs) * 16777216.0f)));
  }
  const std::uint32_t rebiased = abs - 0x38000000u;  // exponent bias 127 → 15
  return static_cast<std::uint16_t>(sign | ((rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13));
}

// Writes a Hugging Face checkpoint of `c`'s tensors (tensor_layout order) to `dir`: config.json
// and one model.safetensors, or model-0000i-of-0000n.safetensors shards plus
// model.safetensors.index.json when the tensors exceed max_shard_bytes. `fill(i, t, out)` writes
// the fp32 values of the i-th tensor `t`; it is called shard by shard, and a shard's bytes are
// freed once written, so the model is never in memory whole. Each file is replaced atomically
// (muon/io/atomic_file.hpp); the index and config come last.
inline void write_checkpoint(const std::filesystem::path& dir, const Config& c, const SaveOptions& options,
                             const std::function<void(std::size_t, const TensorSpec&, std::span<float>)>& fill);

class Weights {
 public:
  // All tensors of `c`, zero-filled.
  explicit Weights(const Config& c) : specs_(tensor_layout(c)) {
    std::size_t offset = 0;
    for (TensorSpec& t : specs_) {
      t.offset = offset;
      // 16-float (64-byte) alignment of each tensor keeps vector loads aligned. Config's bounds
      // keep each count far below 2^63, but not their sum over all layers and experts.
      const std::optional<std::int64_t> n = muon::checked_numel(t.shape);
      constexpr auto max_floats = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max() / 2);
      if (!n || offset > max_floats - (static_cast<std::size_t>(*n) + 15) / 16 * 16) {
        throw muon::InvalidArgument("the config implies more than 2^62 parameters (at tensor '" + t.name +
                                    "'); check its size fields");
      }
      offset += (static_cast<std::size_t>(*n) + 15) / 16 * 16;
      index_.emplace(t.name, &t - specs_.data());
    }
    data_.assign(offset, 0.0f);
  }

  // Reads a Hugging Face checkpoint directory (see the header comment).
  static Weights load(const std::filesystem::path& dir, const Config& c);

  // Writes config.json and the tensors as a checkpoint transformers loads with from_pretrained
  // (write_checkpoint).
  void save(const std::filesystem::path& dir, const Config& c, const SaveOptions& options = {}) const;

  [[nodiscard]] const std::vector<TensorSpec>& tensors() const { return specs_; }
  [[nodiscard]] std::span<float> data() { return data_; }
  [[nodiscard]] std::span<const float> data() const { return data_; }
  [[nodiscard]] bool contains(std::string_view name) const { return index_.find(name) != index_.end(); }

  [[nodiscard]] const TensorSpec& spec(std::string_view name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) throw muon::InvalidArgument("no tensor named '" + std::string(name) + "' in this model");
    return specs_[it->second];
  }
  [[nodiscard]] std::span<float> values(std::string_view name) {
    const TensorSpec& t = spec(name);
    return {data_.data() + t.offset, static_cast<std::size_t>(muon::numel(t.shape))};
  }
  [[nodiscard]] std::span<const float> values(std::string_view name) const {
    const TensorSpec& t = spec(name);
    return {data_.data() + t.offset, static_cast<std::size_t>(muon::numel(t.shape))};
  }

  // The optimizer's view: each tensor's value here and its gradient at the same offset of
  // `grads` (a buffer of data().size() floats that the caller owns).
  [[nodiscard]] std::vector<muon::Parameter> parameter_table(std::span<const float> grads) {
    if (grads.size() != data_.size()) {
      throw muon::ShapeMismatch("gradient buffer has " + std::to_string(grads.size()) + " floats; the weights need " +
                                std::to_string(data_.size()));
    }
    std::vector<muon::Parameter> table;
    for (const TensorSpec& t : specs_) {
      table.push_back({t.name, t.role, {data_.data() + t.offset, t.shape}, {grads.data() + t.offset, t.shape}});
    }
    return table;
  }

 private:
  std::vector<TensorSpec> specs_;
  std::map<std::string, std::size_t, std::less<>> index_;
  std::vector<float> data_;
};

namespace detail {

// Where each tensor of a checkpoint directory lives: the index's weight_map, or every tensor of
// the single model.safetensors.
struct CheckpointFiles {
  std::map<std::string, muon::safetensors::File> files;  // by file name
  std::map<std::string, std::string> file_of;           // tensor name → file name
};

inline CheckpointFiles open_checkpoint(const std::filesystem::path& dir) {
  namespace st = muon::safetensors;
  CheckpointFiles out;
  const std::filesystem::path index_path = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path)) {
    const nlohmann::json index = muon::io::read_json_file(index_path, "index file '" + index_path.string() + "'");
    const auto map = index.find("weight_map");
    if (map == index.end() || !map->is_object()) {
      throw muon::FileError("index file '" + index_path.string() + "' has no \"weight_map\" object");
    }
    for (const auto& [tensor, file] : map->items()) {
      if (!file.is_string()) {
        throw muon::FileError("index file '" + index_path.string() + "': tensor '" + tensor + "' maps to " +
                              file.dump() + ", not a file name");
      }
      const auto& name = file.get_ref<const std::string&>();
      // Shards must sit beside the index: no absolute paths, no "..".
      if (std::filesystem::path(name).has_parent_path()) {
        throw muon::FileError("index file '" + index_path.string() + "': tensor '" + tensor + "' maps to '" + name +
                              "', which is not a file name in the same directory");
      }
      out.file_of.emplace(tensor, name);
      if (!out.files.contains(name)) out.files.emplace(name, st::File::open(dir / name));
    }
    // A shard may hold tensors the index forgot: those are extra tensors too.
    for (const auto& [name, file] : out.files) {
      for (const std::string& tensor : file.names()) {
        const auto it = out.file_of.find(tensor);
        if (it == out.file_of.end()) {
          throw muon::FileError("unexpected tensor '" + tensor + "' in '" + file.path().string() +
                                "': it is not listed in '" + index_path.string() + "'");
        }
        if (it->second != name) {
          throw muon::FileError("tensor '" + tensor + "' is in '" + file.path().string() + "' but '" +
                                index_path.string() + "' places it in '" + it->second + "'");
        }
      }
    }
    return out;
  }
  const std::filesystem::path single = dir / "model.safetensors";
  if (!std::filesystem::exists(single)) {
    throw muon::FileError("checkpoint directory '" + dir.string() +
                          "' has neither model.safetensors nor model.safetensors.index.json");
  }
  auto [it, inserted] = out.files.emplace("model.safetensors", st::File::open(single));
  for (const std::string& tensor : it->second.names()) out.file_of.emplace(tensor, "model.safetensors");
  return out;
}

}  // namespace detail

namespace detail {

// Where a checkpoint keeps one tensor of the layout.
struct LocatedTensor {
  const muon::safetensors::File* file;
  const muon::safetensors::TensorInfo* info;
};

// Every tensor of `specs` in the checkpoint `ckpt` read from `dir`, in spec order: each present
// once, with its exact shape and a floating-point dtype, and no other tensor present; else a
// muon::FileError naming the tensor and the file.
inline std::vector<LocatedTensor> locate_tensors(const CheckpointFiles& ckpt, const std::filesystem::path& dir,
                                                 std::span<const TensorSpec> specs) {
  namespace st = muon::safetensors;
  std::set<std::string_view> expected;
  for (const TensorSpec& t : specs) expected.insert(t.name);
  for (const auto& [tensor, file_name] : ckpt.file_of) {
    if (!expected.contains(tensor)) {
      throw muon::FileError("unexpected tensor '" + tensor + "' in '" + (dir / file_name).string() +
                            "': the config implies no such tensor (check num_hidden_layers, n_routed_experts, "
                            "q_lora_rank, first_k_dense_replace, tie_word_embeddings)");
    }
  }
  std::vector<LocatedTensor> out;
  for (const TensorSpec& t : specs) {
    const auto where = ckpt.file_of.find(t.name);
    if (where == ckpt.file_of.end()) {
      throw muon::FileError("tensor '" + t.name + "' is missing from checkpoint '" + dir.string() + "'");
    }
    const st::File& file = ckpt.files.at(where->second);
    if (!file.contains(t.name)) {
      throw muon::FileError("tensor '" + t.name + "' is missing from '" + file.path().string() +
                            "', where model.safetensors.index.json places it");
    }
    const st::TensorInfo& info = file.info(t.name);
    if (info.shape != t.shape) {
      throw muon::FileError("tensor '" + t.name + "' in '" + file.path().string() + "' has shape " +
                            muon::to_string(info.shape) + "; the config implies " + muon::to_string(t.shape));
    }
    const st::DType dt = info.dtype;
    if (dt != st::DType::F32 && dt != st::DType::BF16 && dt != st::DType::F16 && dt != st::DType::F64) {
      throw muon::FileError("tensor '" + t.name + "' in '" + file.path().string() + "' has dtype " +
                            std::string(st::dtype_name(dt)) + "; weights must be F32, BF16, F16 or F64");
    }
    out.push_back({&file, &info});
  }
  return out;
}

}  // namespace detail

inline Weights Weights::load(const std::filesystem::path& dir, const Config& c) {
  Weights w(c);
  const detail::CheckpointFiles ckpt = detail::open_checkpoint(dir);
  const std::vector<detail::LocatedTensor> located = detail::locate_tensors(ckpt, dir, w.specs_);
  for (std::size_t i = 0; i < w.specs_.size(); ++i) {
    const std::vector<float> values = located[i].file->to_float(w.specs_[i].name);
    std::copy(values.begin(), values.end(), w.data_.begin() + static_cast<std::ptrdiff_t>(w.specs_[i].offset));
  }
  return w;
}

namespace detail {

// fp32 values as `dtype`'s little-endian bytes.
inline std::vector<std::byte> encode(std::span<const float> v, SaveDType dtype) {
  if (dtype == SaveDType::f32) {
    const auto bytes = std::as_bytes(v);
    return {bytes.begin(), bytes.end()};
  }
  std::vector<std::byte> out(2 * v.size());
  for (std::size_t k = 0; k < v.size(); ++k) {
    const std::uint16_t half = dtype == SaveDType::bf16 ? float_to_bf16(v[k]) : float_to_f16(v[k]);
    std::memcpy(out.data() + 2 * k, &half, 2);  // native order is little-endian (safetensors.hpp)
  }
  return out;
}

}  // namespace detail

inline void write_checkpoint(const std::filesystem::path& dir, const Config& c, const SaveOptions& options,
                             const std::function<void(std::size_t, const TensorSpec&, std::span<float>)>& fill) {
  namespace st = muon::safetensors;
  std::filesystem::create_directories(dir);
  const std::vector<TensorSpec> specs = tensor_layout(c);
  const std::size_t element_bytes = options.dtype == SaveDType::f32 ? 4 : 2;

  // Split the tensors, in layout order, into shards of at most max_shard_bytes (a tensor larger
  // than that gets a shard of its own, as in transformers).
  std::vector<std::vector<std::size_t>> shards(1);
  std::uint64_t shard_bytes = 0, total_bytes = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const std::uint64_t bytes = static_cast<std::uint64_t>(muon::numel(specs[i].shape)) * element_bytes;
    if (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  const auto shard_name = [&](std::size_t i) {
    if (shards.size() == 1) return std::string("model.safetensors");
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    return std::string(buf);
  };
  const st::DType dtype = options.dtype == SaveDType::f32 ? st::DType::F32
                          : options.dtype == SaveDType::bf16 ? st::DType::BF16
                                                             : st::DType::F16;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::vector<float> values;
  for (std::size_t s = 0; s < shards.size(); ++s) {
    std::vector<std::vector<std::byte>> encoded;  // this shard's bytes, freed before the next shard
    encoded.reserve(shards[s].size());  // the spans in `tensors` point into these vectors
    std::vector<st::TensorToWrite> tensors;
    for (const std::size_t i : shards[s]) {
      const TensorSpec& t = specs[i];
      values.resize(static_cast<std::size_t>(muon::numel(t.shape)));
      fill(i, t, values);
      tensors.push_back({t.name, dtype, t.shape, encoded.emplace_back(detail::encode(values, options.dtype))});
      weight_map[t.name] = shard_name(s);
    }
    values = {};
    // transformers refuses safetensors files whose metadata lacks format "pt".
    st::write(dir / shard_name(s), tensors, {{"format", "pt"}});
  }
  const std::filesystem::path index_path = dir / "model.safetensors.index.json";
  if (shards.size() > 1) {
    const nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    muon::io::write_file_atomically(index_path, index.dump(2) + "\n", "checkpoint index");
  } else {
    // A stale index from an earlier sharded save would shadow the new single file.
    std::filesystem::remove(index_path);
  }
  nlohmann::json config = c.json;
  // Both names: transformers >= 4.56 reads "dtype", older versions "torch_dtype".
  config["torch_dtype"] = config["dtype"] = options.dtype == SaveDType::f32    ? "float32"
                                            : options.dtype == SaveDType::bf16 ? "bfloat16"
                                                                               : "float16";
  muon::io::write_file_atomically(dir / "config.json", config.dump(2) + "\n", "config");
}

inline void Weights::save(const std::filesystem::path& dir, const Config& c, const SaveOptions& options) const {
  write_checkpoint(dir, c, options, [&](std::size_t, const TensorSpec& t, std::span<float> out) {
    const std::span<const float> v = values(t.name);
    if (v.size() != out.size()) {
      throw muon::ShapeMismatch("cannot save tensor '" + t.name + "': these weights have " + std::to_string(v.size()) +
                                " values, the config given to save implies " + std::to_string(out.size()));
    }
    std::copy(v.begin(), v.end(), out.begin());
  });
}

}  // namespace moonlight
