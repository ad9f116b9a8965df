// The `moonlight init` subcommand: a Hugging Face checkpoint of random weights for a config,
// written shard by shard (moonlight/init_checkpoint.hpp), so that even a 16B model needs only
// about one shard of memory.
//
//   moonlight init --config configs/moonlight-16b-a3b.json --dtype bf16 --seed 1 --out moonlight-init
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include <moonlight/init_checkpoint.hpp>
#include <moonlight/parameter_count.hpp>

#include "info_command.hpp"

namespace moonlight::cli {

struct InitArgs {
  std::filesystem::path config, out;
  SaveDType dtype = SaveDType::bf16;
  std::uint64_t seed = 0;
  std::uint64_t max_shard_bytes = SaveOptions{}.max_shard_bytes;
};

inline int init(const InitArgs& args) {
  const Config config = read_model_config(args.config);
  init_checkpoint(args.out, config, args.seed, {.dtype = args.dtype, .max_shard_bytes = args.max_shard_bytes});
  std::printf("wrote %s parameters (seed %llu) to %s\n", with_thousands(count_parameters(config).total).c_str(),
              static_cast<unsigned long long>(args.seed), args.out.c_str());
  return 0;
}

}  // namespace moonlight::cli
