// The `moonlight train` and `moonlight tokenize` subcommands, defined in train_command.cpp.
//
//   moonlight train --config configs/tiny.json --data corpus/ --out runs/tiny [--resume]
//   mpirun -np 2 moonlight train ...            # data-parallel over ZeRO-1 (when built with MPI)
//   moonlight tokenize --data corpus/ --out corpus.bin
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moonlight::cli {

// What the command line says. `overrides` is a JSON patch of the run config made by the schema
// flags (tools/schema_flags.hpp); fields it leaves out keep the run config's value.
struct TrainArgs {
  std::filesystem::path config, out, tokenizer;
  std::vector<std::filesystem::path> data;
  std::string document_separator;
  bool resume = false;
  nlohmann::json overrides = nlohmann::json::object();
  std::string sample_prompt;
  std::int64_t sample_tokens = 48;
};

// Trains as `args` says: on MPI when started by mpirun (and built with MPI), else in this process.
int train_dispatch(const TrainArgs& args, int& argc, char**& argv);

// Tokenizes `data` into one shard file `out`.
int tokenize(const std::filesystem::path& tokenizer_file, const std::vector<std::filesystem::path>& data,
             const std::string& separator, const std::filesystem::path& out);

}  // namespace moonlight::cli
