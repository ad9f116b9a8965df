// moonlight/init_checkpoint.hpp: a Hugging Face checkpoint of randomly initialised weights,
// written from a config without ever holding the model in memory.
//
// Initialisation as transformers' DeepseekV3: N(0, initializer_range) (default 0.02) for every
// matrix, the embedding and the head; ones for the norms; zeros for e_score_correction_bias.
// Each block of kInitBlock values of tensor i is drawn from its own generator, seeded from
// (seed, i, block): the values depend on the seed alone, not on the shard size or the thread
// count, and large tensors are drawn in parallel. The checkpoint is written shard by shard
// (write_checkpoint in weights.hpp) into a temporary directory beside `dir`, which is renamed to
// `dir` only when complete: `dir` is either absent/empty or holds the whole checkpoint.
//
//   moonlight::init_checkpoint("runs/init", config, /*seed=*/1, {.dtype = moonlight::SaveDType::bf16});
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <numbers>
#include <random>
#include <span>
#include <string>
#include <unistd.h>

#include "moonlight/config.hpp"
#include "moonlight/weights.hpp"
#include "muon/error.hpp"
#include "muon/io/atomic_file.hpp"

namespace moonlight {

inline constexpr std::size_t kInitBlock = std::size_t{1} << 20;

// The initial values of tensor `index` (`t`) of tensor_layout(c).
inline void initial_values(const Config& c, std::uint64_t seed, std::size_t index, const TensorSpec& t,
                           std::span<float> out) {
  if (t.role == muon::Role::norm || t.role == muon::Role::bias) {
    std::ranges::fill(out, t.role == muon::Role::norm ? 1.0f : 0.0f);
    return;
  }
  const double std_dev = detail::float_field(c.json, "initializer_range", 0.02);
  if (!(std_dev >= 0.0)) throw ConfigError("initializer_range", "is " + std::to_string(std_dev) + "; it must be >= 0");
  const auto blocks = static_cast<std::int64_t>((out.size() + kInitBlock - 1) / kInitBlock);
#pragma omp parallel for schedule(dynamic)
  for (std::int64_t b = 0; b < blocks; ++b) {
    std::seed_seq seq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                      static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(b)};
    std::mt19937_64 rng(seq);
    // Box–Muller on 53-bit uniforms in (0, 1]: the same numbers with any standard library
    // (std::normal_distribution's algorithm is left to the implementation).
    const auto uniform = [&] { return static_cast<double>((rng() >> 11) + 1) * 0x1p-53; };
    const std::size_t begin = static_cast<std::size_t>(b) * kInitBlock;
    const std::size_t end = std::min(out.size(), begin + kInitBlock);
    for (std::size_t k = begin; k < end; k += 2) {
      const double radius = std_dev * std::sqrt(-2.0 * std::log(uniform()));
      const double angle = 2.0 * std::numbers::pi * uniform();
      out[k] = static_cast<float>(radius * std::cos(angle));
      if (k + 1 < end) out[k + 1] = static_cast<float>(radius * std::sin(angle));
    }
  }
}

// Writes the checkpoint described in the header comment. Throws muon::InvalidArgument when `dir`
// exists and is not an empty directory.
inline void init_checkpoint(const std::filesystem::path& dir, const Config& c, std::uint64_t seed,
                            const SaveOptions& options = {}) {
  namespace fs = std::filesystem;
  if (fs::exists(dir) && !(fs::is_directory(dir) && fs::is_empty(dir))) {
    throw muon::InvalidArgument("output directory '" + dir.string() +
                                "' exists and is not an empty directory; choose another directory or remove it");
  }
  fs::path target = fs::absolute(dir).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();  // "out/"
  const fs::path parent = target.parent_path();
  fs::create_directories(parent);
  const fs::path temp = parent / ("." + target.filename().string() + ".tmp." + std::to_string(::getpid()));
  fs::remove_all(temp);
  try {
    write_checkpoint(temp, c, options, [&](std::size_t index, const TensorSpec& t, std::span<float> out) {
      initial_values(c, seed, index, t, out);
    });
    // rename(2) replaces an empty directory; the parent's fsync makes the new name durable.
    fs::rename(temp, target);
    muon::io::fsync_directory(parent, "checkpoint directory", target);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(temp, ignored);
    throw;
  }
}

}  // namespace moonlight
