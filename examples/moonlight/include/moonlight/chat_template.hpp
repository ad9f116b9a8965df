// moonlight/chat_template.hpp: the Moonlight Instruct chat template (docs/moonlight-architecture.md §7.4).
//
// Renders what the `chat_template` of Moonlight-16B-A3B-Instruct's tokenizer_config.json renders
// (a Jinja template with `-` trimming, so no newlines anywhere): for each message, its role
// marker, the role name as plain text, <|im_middle|>, the content and <|im_end|>. When the first
// message is not a system message, the default system turn comes first. Encode the result with
// Tokenizer::encode_with_special; the template adds no BOS.
//
//   std::vector<moonlight::ChatMessage> chat = {{"user", "Is 123 a prime?"}};
//   std::string prompt = moonlight::apply_chat_template(chat, /*add_generation_prompt=*/true);
//   // <|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|><|im_user|>user
//   // <|im_middle|>Is 123 a prime?<|im_end|><|im_assistant|>assistant<|im_middle|>   (one line)
#pragma once

#include <span>
#include <string>
#include <string_view>

#include <muon/error.hpp>

namespace moonlight {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// The system prompt the template inserts when the conversation does not start with one.
inline constexpr std::string_view default_system_prompt = "You are a helpful assistant";

// Throws muon::InvalidArgument for a role other than system, user or assistant. (The Jinja
// template would render such a message without a role marker; the model never saw that.)
inline std::string apply_chat_template(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  std::string out;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    std::string_view marker;
    if (message.role == "system") {
      marker = "<|im_system|>";
    } else if (message.role == "user") {
      marker = "<|im_user|>";
    } else if (message.role == "assistant") {
      marker = "<|im_assistant|>";
    } else {
      throw muon::InvalidArgument("chat message " + std::to_string(i) + " has role '" + message.role +
                                  "'; the Moonlight template knows system, user and assistant");
    }
    if (i == 0 && message.role != "system") {
      out += "<|im_system|>system<|im_middle|>";
      out += default_system_prompt;
      out += "<|im_end|>";
    }
    out += marker;
    out += message.role;
    out += "<|im_middle|>";
    out += message.content;
    out += "<|im_end|>";
  }
  if (add_generation_prompt) out += "<|im_assistant|>assistant<|im_middle|>";
  return out;
}

}  // namespace moonlight
