// moonlight: training, text generation and chat with a Moonlight / DeepseekV3 model on the CPU.
//
//   moonlight train --config configs/tiny.json --data corpus/ --out runs/tiny   (train_command.hpp)
//   moonlight tokenize --data corpus/ --out corpus.bin
//   moonlight compare --baseline runs/adamw --runs runs/muon --plot study.png  (compare_command.hpp)
//   moonlight logits --runs runs/muon runs/muon-qkclip --plot logits.png        (logits_command.hpp)
//   moonlight info --config configs/moonlight-16b-a3b.json                     (info_command.hpp)
//   moonlight init --config configs/tiny.json --dtype bf16 --seed 1 --out DIR  (init_command.hpp)
//   moonlight generate --model DIR --prompt "Once upon a time" --max-new-tokens 64 --temperature 0.7 --seed 1
//   moonlight chat --model DIR
//
// DIR is a Hugging Face checkpoint directory: config.json, model.safetensors (or shards with
// model.safetensors.index.json) in F32/BF16/F16, read in place from the memory-mapped files
// (Model::map: resident memory about the checkpoint's size), tiktoken.model and tokenizer_config.json; or a
// checkpoint `train` wrote (or its run directory), which is verified against its manifest first.
// `generate` encodes the prompt as is (special-token strings become their ids, as Moonlight's
// tokenizer does); `chat` renders the conversation with the Instruct chat template. Both stream
// tokens as they come and stop on the config's eos_token_id or the tokenizer's eos token.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include <moonlight/chat_template.hpp>
#include <moonlight/checkpoint.hpp>
#include <moonlight/generate.hpp>
#include <moonlight/model.hpp>
#include <moonlight/tokenizer.hpp>
#include <moonlight/utf8_stream.hpp>

#include <moonlight/train_options.hpp>

#include "compare_command.hpp"
#include "info_command.hpp"
#include "init_command.hpp"
#include "logits_command.hpp"
#include "schema_flags.hpp"
#include "train_command.hpp"

namespace {

struct Loaded {
  moonlight::Model model;
  moonlight::Tokenizer tokenizer;
  std::vector<std::int32_t> stop_ids;
};

// A directory `train` wrote is verified against its manifest first; a plain Hugging Face directory
// carries no checksums, and the user is told so.
Loaded load(const std::filesystem::path& path) {
  std::filesystem::path dir = path;
  if (moonlight::has_manifest(path)) {
    dir = moonlight::open_checkpoint(path).dir;
  } else {
    std::fprintf(stderr, "moonlight: note: '%s' has no checkpoint manifest (a plain Hugging Face directory); "
                 "its files are read without checksum verification\n", path.c_str());
  }
  Loaded out{moonlight::Model::map(dir), moonlight::Tokenizer::load_dir(dir), {}};
  out.stop_ids = out.model.config().eos_token_ids;
  if (const auto eos = out.tokenizer.eos_id()) out.stop_ids.push_back(*eos);
  return out;
}

bool is_stop(const std::vector<std::int32_t>& stops, std::int32_t id) {
  return std::find(stops.begin(), stops.end(), id) != stops.end();
}

// Generates from `ids` on a fresh cache, streaming all but stop tokens; returns the text.
std::string respond(const Loaded& m, std::span<const std::int32_t> ids, moonlight::SamplingOptions options) {
  options.stop_ids = m.stop_ids;
  moonlight::KvCache cache(m.model.config());
  moonlight::Utf8Stream stream;
  std::string text;
  moonlight::generate(m.model, cache, ids, options, [&](std::int32_t id) {
    if (!is_stop(m.stop_ids, id)) {
      const std::string_view bytes = m.tokenizer.token_bytes(id);
      text += bytes;
      std::cout << stream.push(bytes) << std::flush;
    }
    return true;
  });
  std::cout << stream.flush() << std::endl;
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train a Moonlight (DeepseekV3) model with muon, and generate text with it, on the CPU"};
  app.require_subcommand(1);
  std::filesystem::path model_dir;
  std::string prompt, system_prompt;
  moonlight::SamplingOptions sampling{.max_new_tokens = 256};
  const auto add_common = [&](CLI::App* cmd) {
    cmd->add_option("--model", model_dir, "Hugging Face checkpoint directory")->required()->check(CLI::ExistingDirectory);
    cmd->add_option("--max-new-tokens", sampling.max_new_tokens, "tokens to generate at most")->check(CLI::NonNegativeNumber)->capture_default_str();
    cmd->add_option("--temperature", sampling.temperature, "0 for greedy decoding")->check(CLI::NonNegativeNumber)->capture_default_str();
    cmd->add_option("--top-k", sampling.top_k, "sample among the k most likely tokens (0: all)")->check(CLI::NonNegativeNumber)->capture_default_str();
    cmd->add_option("--top-p", sampling.top_p, "sample among the most likely tokens holding this probability")->check(CLI::Range(0.0f, 1.0f))->capture_default_str();
    cmd->add_option("--seed", sampling.seed, "random seed for sampling")->capture_default_str();
  };
  CLI::App* generate = app.add_subcommand("generate", "continue a prompt");
  add_common(generate);
  generate->add_option("--prompt", prompt, "text to continue")->required();
  CLI::App* chat = app.add_subcommand("chat", "chat with an Instruct model (reads user turns from stdin)");
  add_common(chat);
  chat->add_option("--system", system_prompt, "system prompt (default: the template's)");

  moonlight::cli::TrainArgs train_args;
  train_args.tokenizer = MOONLIGHT_DEFAULT_TOKENIZER;
  CLI::App* train = app.add_subcommand("train", "train a model with muon (Muon + AdamW) or AdamW");
  train->add_option("--config", train_args.config, "run config: {\"model\": config.json, \"training\": {...}, \"muon\": {...}}");
  train->add_option("--data", train_args.data, "UTF-8 text files, .bin token shards, or directories of them")->required();
  train->add_option("--out", train_args.out, "run directory (metrics, plot, checkpoints)")->required();
  train->add_flag("--resume", train_args.resume, "continue the run in --out from its latest checkpoint");
  train->add_option("--tokenizer", train_args.tokenizer, "tiktoken rank file")->capture_default_str();
  train->add_option("--doc-separator", train_args.document_separator, "a line holding only this ends a document (fortune files: %)");
  train->add_option("--sample-prompt", train_args.sample_prompt, "print a greedy continuation of this before and after training");
  train->add_option("--sample-tokens", train_args.sample_tokens, "tokens per sample")->capture_default_str();
  moonlight::cli::add_schema_flags(*train, moonlight::TrainOptions{}, "training", train_args.overrides);
  moonlight::cli::add_schema_flags(*train, moonlight::default_run_optimizer(), "muon", train_args.overrides);

  std::filesystem::path tokenize_out, tokenizer_file = MOONLIGHT_DEFAULT_TOKENIZER;
  std::vector<std::filesystem::path> tokenize_data;
  std::string tokenize_separator;
  CLI::App* tokenize = app.add_subcommand("tokenize", "write a corpus as a token shard for `train --data`");
  tokenize->add_option("--data", tokenize_data, "UTF-8 text files or directories")->required();
  tokenize->add_option("--out", tokenize_out, "shard file to write (.bin)")->required();
  tokenize->add_option("--tokenizer", tokenizer_file, "tiktoken rank file")->capture_default_str();
  tokenize->add_option("--doc-separator", tokenize_separator, "a line holding only this ends a document");

  std::filesystem::path baseline, compare_plot;
  std::vector<std::filesystem::path> compare_runs;
  CLI::App* compare = app.add_subcommand("compare", "tokens each run needs to reach a baseline's final validation loss");
  compare->add_option("--baseline", baseline, "run directory whose final validation loss is the target")->required();
  compare->add_option("--runs", compare_runs, "run directories to compare")->required();
  compare->add_option("--plot", compare_plot, "PNG of all validation curves");

  std::vector<std::filesystem::path> logits_runs;
  std::filesystem::path logits_plot;
  bool logits_per_head = false;
  std::optional<double> logits_tau;
  CLI::App* logits = app.add_subcommand("logits", "each run's largest attention logits over training (what QK-clip caps)");
  logits->add_option("--runs", logits_runs, "run directories written by `moonlight train`")->required();
  logits->add_option("--plot", logits_plot, "PNG of each run's largest logit over all heads, per step");
  logits->add_flag("--per-head", logits_per_head, "also print each head's peak over the run");
  logits->add_option("--tau", logits_tau, "draw QK-clip's threshold as a line on the plot")->check(CLI::PositiveNumber);

  std::filesystem::path info_config;
  CLI::App* info = app.add_subcommand("info", "parameter counts, tensor count and checkpoint size of a config");
  info->add_option("--config", info_config, "Hugging Face config.json, or a run config")->required()->check(CLI::ExistingFile);

  moonlight::cli::InitArgs init_args;
  CLI::App* init = app.add_subcommand("init", "write a Hugging Face checkpoint of randomly initialised weights");
  init->add_option("--config", init_args.config, "Hugging Face config.json, or a run config")->required()->check(CLI::ExistingFile);
  const std::map<std::string, moonlight::SaveDType> dtypes{
      {"bf16", moonlight::SaveDType::bf16}, {"f16", moonlight::SaveDType::f16}, {"f32", moonlight::SaveDType::f32}};
  std::string init_dtype = "bf16";
  init->add_option("--dtype", init_dtype, "dtype of the tensors: bf16, f16 or f32")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))->capture_default_str();
  init->add_option("--seed", init_args.seed, "random seed of the weights")->capture_default_str();
  init->add_option("--out", init_args.out, "checkpoint directory to create (must not exist, or be empty)")->required();
  init->add_option("--max-shard-bytes", init_args.max_shard_bytes, "largest safetensors shard")
      ->check(CLI::PositiveNumber)->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    if (train->parsed()) return moonlight::cli::train_dispatch(train_args, argc, argv);
    if (compare->parsed()) return moonlight::cli::compare(baseline, compare_runs, compare_plot);
    if (logits->parsed()) return moonlight::cli::logits(logits_runs, logits_plot, logits_per_head, logits_tau);
    if (info->parsed()) return moonlight::cli::info(info_config);
    if (init->parsed()) {
      init_args.dtype = dtypes.at(init_dtype);
      return moonlight::cli::init(init_args);
    }
    if (tokenize->parsed()) return moonlight::cli::tokenize(tokenizer_file, tokenize_data, tokenize_separator, tokenize_out);
    sampling.validate();
    const Loaded m = load(model_dir);
    if (generate->parsed()) {
      const std::vector<std::int32_t> ids = m.tokenizer.encode_with_special(prompt);
      if (ids.empty()) throw muon::InvalidArgument("--prompt encodes to no tokens");
      std::cout << prompt << std::flush;
      respond(m, ids, sampling);
      return 0;
    }
    // Each turn re-renders the whole conversation and prefills it on a fresh cache: simple, and
    // exactly the token sequence the template defines.
    std::vector<moonlight::ChatMessage> messages;
    if (!system_prompt.empty()) messages.push_back({"system", system_prompt});
    std::string line;
    while (std::cout << "> " << std::flush, std::getline(std::cin, line)) {
      if (line.empty()) continue;
      messages.push_back({"user", line});
      const std::string rendered = moonlight::apply_chat_template(messages, /*add_generation_prompt=*/true);
      messages.push_back({"assistant", respond(m, m.tokenizer.encode_with_special(rendered), sampling)});
    }
    std::cout << '\n';
  } catch (const muon::Error& e) {
    std::fprintf(stderr, "moonlight: %s\n", e.what());
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    std::fprintf(stderr, "moonlight: %s\n", e.what());
    return 1;
  }
  return 0;
}
