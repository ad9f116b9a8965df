// moonlight: text generation and chat with a Moonlight / DeepseekV3 checkpoint on the CPU.
//
//   moonlight generate --model DIR --prompt "Once upon a time" --max-new-tokens 64 --temperature 0.7 --seed 1
//   moonlight chat --model DIR
//
// DIR is a Hugging Face checkpoint directory: config.json, model.safetensors (or shards with
// model.safetensors.index.json) in F32/BF16/F16, tiktoken.model and tokenizer_config.json.
// `generate` encodes the prompt as is (special-token strings become their ids, as Moonlight's
// tokenizer does); `chat` renders the conversation with the Instruct chat template. Both stream
// tokens as they come and stop on the config's eos_token_id or the tokenizer's eos token.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include <moonlight/chat_template.hpp>
#include <moonlight/generate.hpp>
#include <moonlight/model.hpp>
#include <moonlight/tokenizer.hpp>
#include <moonlight/utf8_stream.hpp>

namespace {

struct Loaded {
  moonlight::Model model;
  moonlight::Tokenizer tokenizer;
  std::vector<std::int32_t> stop_ids;
};

Loaded load(const std::filesystem::path& dir) {
  Loaded out{moonlight::Model::load(dir), moonlight::Tokenizer::load_dir(dir), {}};
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
  CLI::App app{"Generate text with a Moonlight (DeepseekV3) checkpoint on the CPU"};
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
  CLI11_PARSE(app, argc, argv);

  try {
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
  }
  return 0;
}
