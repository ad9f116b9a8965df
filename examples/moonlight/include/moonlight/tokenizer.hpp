// moonlight/tokenizer.hpp: Moonlight's tiktoken tokenizer: rank file, regex, special tokens.
//
// Encodes and decodes exactly as the Python `tiktoken` package does with Moonlight's `pat_str`
// and special tokens (docs/moonlight-architecture.md §7), on any rank file: the real `tiktoken.model` of a Hugging
// Face Moonlight repository, or one trained with moonlight/bpe_trainer.hpp.
//
//   auto tok = moonlight::Tokenizer::load_dir("Moonlight-16B-A3B-Instruct");
//   std::vector<std::int32_t> ids = tok.encode_with_special("<|im_user|>user<|im_middle|>Hi");
//   std::string text = tok.decode(ids);                        // byte-exact
//   for (auto id : ids) std::cout << tok.token_bytes(id);      // streaming
//
// `encode` treats special-token strings as ordinary text (tiktoken's encode_ordinary);
// `encode_with_special` turns them into their ids (tiktoken's encode with allowed_special="all",
// the default of Moonlight's own tokenizer). Neither adds a BOS token, as Moonlight's does not.
// Invalid UTF-8 never throws: see moonlight/pretokenizer.hpp.
// A Tokenizer does not change after construction: several threads may encode and decode with
// one tokenizer at once.
//
// Not reproduced from Moonlight's Python wrapper (tokenization_moonshot.py): it cuts inputs into
// chunks of at most 400,000 characters and runs of at most 25,000 whitespace or non-whitespace
// characters before calling tiktoken, to bound tiktoken's quadratic merge. Here merging is
// O(n log n) (moonlight/bpe.hpp), so the text is encoded whole, as tiktoken itself would.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <muon/error.hpp>
#include <muon/io/json.hpp>

#include "moonlight/bpe.hpp"
#include "moonlight/pretokenizer.hpp"
#include "moonlight/tiktoken_file.hpp"

namespace moonlight {

struct SpecialToken {
  std::string text;
  std::int32_t id;
};

// The special tokens of a tokenizer and which of them are BOS and EOS (by text; empty = none).
struct SpecialTokens {
  std::vector<SpecialToken> tokens;
  std::string bos;
  std::string eos;

  // Moonlight's table (docs/moonlight-architecture.md §7.3) placed after `num_ranks` ordinary tokens: 256 ids,
  // [BOS] at num_ranks, [EOS] +1, <|im_end|> +2, <|im_user|> +3, <|im_assistant|> +4,
  // <|im_system|> +10, <|im_middle|> +17, [PAD] +254, [UNK] +255, and every other id named
  // <|reserved_token_{id}|> as Moonlight's tokenizer names it. With the real 163,584 ranks this
  // is the Instruct model's table. BOS is [BOS]; EOS is <|im_end|>, the Instruct model's stop token.
  // (Moonlight's code builds 258 such ids, two past its embedding; those two are left out.)
  static SpecialTokens moonlight(std::int32_t num_ranks) {
    static constexpr std::pair<std::int32_t, std::string_view> named[] = {
        {0, "[BOS]"},          {1, "[EOS]"},           {2, "<|im_end|>"},
        {3, "<|im_user|>"},    {4, "<|im_assistant|>"}, {10, "<|im_system|>"},
        {17, "<|im_middle|>"}, {254, "[PAD]"},          {255, "[UNK]"}};
    SpecialTokens specials;
    for (std::int32_t offset = 0; offset < num_reserved; ++offset) {
      specials.tokens.push_back({reserved_name(num_ranks + offset), num_ranks + offset});
    }
    for (const auto& [offset, text] : named) specials.tokens[offset].text = text;
    specials.bos = "[BOS]";
    specials.eos = "<|im_end|>";
    return specials;
  }

  static std::string reserved_name(std::int32_t id) {
    return "<|reserved_token_" + std::to_string(id) + "|>";
  }

  static constexpr std::int32_t num_reserved = 256;
};

class Tokenizer {
 public:
  // Loads a tiktoken rank file with Moonlight's special-token table after its last rank.
  static Tokenizer load(const std::filesystem::path& rank_file) {
    std::vector<std::string> tokens = read_rank_file(rank_file);
    SpecialTokens specials = SpecialTokens::moonlight(static_cast<std::int32_t>(tokens.size()));
    return Tokenizer(std::move(tokens), std::move(specials), rank_file.string());
  }

  // Loads a tiktoken rank file with the given special tokens.
  static Tokenizer load(const std::filesystem::path& rank_file, SpecialTokens specials) {
    return Tokenizer(read_rank_file(rank_file), std::move(specials), rank_file.string());
  }

  // Loads a Hugging Face Moonlight directory: `tiktoken.model`, and the special tokens of
  // `tokenizer_config.json` (`added_tokens_decoder`, `bos_token`, `eos_token`), each id of the
  // 256 after the last rank that the file does not name being <|reserved_token_{id}|>, as
  // Moonlight's tokenizer does. Without tokenizer_config.json: SpecialTokens::moonlight.
  static Tokenizer load_dir(const std::filesystem::path& model_dir) {
    const std::filesystem::path rank_file = model_dir / "tiktoken.model";
    const std::filesystem::path config_file = model_dir / "tokenizer_config.json";
    std::vector<std::string> tokens = read_rank_file(rank_file);
    const auto num_ranks = static_cast<std::int32_t>(tokens.size());
    SpecialTokens specials = std::filesystem::exists(config_file)
                                 ? read_tokenizer_config(config_file, num_ranks)
                                 : SpecialTokens::moonlight(num_ranks);
    return Tokenizer(std::move(tokens), std::move(specials), rank_file.string());
  }

  // A tokenizer over tokens given by rank (e.g. fresh from train_bpe). `source` names them in
  // errors. Throws muon::InvalidArgument on duplicate bytes, a missing single byte, or a special
  // token whose id or text is taken.
  Tokenizer(std::vector<std::string> tokens_by_rank, SpecialTokens specials, std::string source)
      : num_ranks_(static_cast<std::int32_t>(tokens_by_rank.size())) {
    const auto fail = [&](const std::string& what) {
      return muon::InvalidArgument("tokenizer '" + source + "': " + what);
    };
    ranks_.reserve(tokens_by_rank.size());
    for (std::size_t rank = 0; rank < tokens_by_rank.size(); ++rank) {
      if (tokens_by_rank[rank].empty()) throw fail("rank " + std::to_string(rank) + " is empty");
      const auto [it, inserted] = ranks_.emplace(tokens_by_rank[rank], static_cast<Rank>(rank));
      if (!inserted) {
        throw fail("ranks " + std::to_string(it->second) + " and " + std::to_string(rank) +
                   " have the same bytes '" + base64_encode(tokens_by_rank[rank]) + "' (base64)");
      }
    }
    for (int byte = 0; byte < 256; ++byte) {
      if (!ranks_.contains(std::string(1, static_cast<char>(byte)))) {
        throw fail("no rank for the single byte " + std::to_string(byte) +
                   "; byte-level BPE needs all 256");
      }
    }
    bytes_ = std::move(tokens_by_rank);
    is_special_.assign(bytes_.size(), false);
    for (const SpecialToken& special : specials.tokens) {
      if (special.id < num_ranks_) {
        throw fail("special token '" + special.text + "' has id " + std::to_string(special.id) +
                   ", which is an ordinary rank (< " + std::to_string(num_ranks_) + ")");
      }
      if (special.text.empty()) throw fail("special token " + std::to_string(special.id) + " is empty");
      const auto index = static_cast<std::size_t>(special.id);
      if (index >= bytes_.size()) {
        bytes_.resize(index + 1);
        is_special_.resize(index + 1, false);
      }
      if (is_special_[index]) {
        throw fail("special tokens '" + bytes_[index] + "' and '" + special.text + "' share id " +
                   std::to_string(special.id));
      }
      if (!special_ids_.emplace(special.text, special.id).second) {
        throw fail("special token '" + special.text + "' is given twice");
      }
      bytes_[index] = special.text;
      is_special_[index] = true;
      specials_by_first_byte_[static_cast<unsigned char>(special.text[0])].push_back(special.text);
    }
    // Longest first, so that at one position the longest special token wins.
    for (auto& texts : specials_by_first_byte_) {
      std::sort(texts.begin(), texts.end(),
                [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    }
    const auto lookup = [&](const std::string& text, const char* which) -> std::optional<std::int32_t> {
      if (text.empty()) return std::nullopt;
      const std::optional<std::int32_t> id = special_id(text);
      if (!id) throw fail(std::string(which) + " token '" + text + "' is not a special token");
      return id;
    };
    bos_ = lookup(specials.bos, "BOS");
    eos_ = lookup(specials.eos, "EOS");
  }

  // Ordinary text to ids; special-token strings in `text` are encoded as plain text.
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> ids;
    BpeScratch scratch;
    encode_ordinary_into(text, ids, scratch);
    return ids;
  }

  // Text to ids, with every special-token string in `text` becoming its id.
  [[nodiscard]] std::vector<std::int32_t> encode_with_special(std::string_view text) const {
    std::vector<std::int32_t> ids;
    BpeScratch scratch;
    std::size_t begin = 0;  // start of the ordinary text not yet encoded
    for (std::size_t i = 0; i < text.size(); ++i) {
      for (const std::string& special : specials_by_first_byte_[static_cast<unsigned char>(text[i])]) {
        if (text.substr(i, special.size()) != special) continue;
        encode_ordinary_into(text.substr(begin, i - begin), ids, scratch);
        ids.push_back(special_ids_.find(special)->second);
        begin = i + special.size();
        i = begin - 1;
        break;
      }
    }
    encode_ordinary_into(text.substr(begin), ids, scratch);
    return ids;
  }

  // Ids to the exact bytes they stand for (special tokens as their text). Throws
  // muon::InvalidArgument for an id outside [0, vocab_size()) or one that names no token.
  [[nodiscard]] std::string decode(std::span<const std::int32_t> ids) const {
    std::string text;
    for (const std::int32_t id : ids) text += token_bytes(id);
    return text;
  }

  // The bytes of one token: for streaming output, where a UTF-8 character may span tokens.
  [[nodiscard]] std::string_view token_bytes(std::int32_t id) const {
    if (id < 0 || id >= vocab_size()) {
      throw muon::InvalidArgument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                  std::to_string(vocab_size()) + ")");
    }
    const auto index = static_cast<std::size_t>(id);
    if (index >= static_cast<std::size_t>(num_ranks_) && !is_special_[index]) {
      throw muon::InvalidArgument("token id " + std::to_string(id) + " is not assigned to any token");
    }
    return bytes_[index];
  }

  // One past the largest id: the embedding rows a model needs.
  [[nodiscard]] std::int32_t vocab_size() const noexcept { return static_cast<std::int32_t>(bytes_.size()); }
  // Number of ordinary (BPE) tokens: ids 0..num_ranks()-1.
  [[nodiscard]] std::int32_t num_ranks() const noexcept { return num_ranks_; }
  [[nodiscard]] bool is_special(std::int32_t id) const noexcept {
    return id >= 0 && id < vocab_size() && is_special_[static_cast<std::size_t>(id)];
  }
  [[nodiscard]] std::optional<std::int32_t> special_id(std::string_view text) const {
    const auto it = special_ids_.find(text);
    return it == special_ids_.end() ? std::nullopt : std::optional<std::int32_t>(it->second);
  }
  [[nodiscard]] std::optional<std::int32_t> bos_id() const noexcept { return bos_; }
  [[nodiscard]] std::optional<std::int32_t> eos_id() const noexcept { return eos_; }
  [[nodiscard]] const Pretokenizer& pretokenizer() const noexcept { return pretokenizer_; }

 private:
  void encode_ordinary_into(std::string_view text, std::vector<std::int32_t>& ids,
                            BpeScratch& scratch) const {
    pretokenizer_.for_each_piece(text, [&](std::string_view piece) {
      encode_piece(piece, ranks_, ids, scratch);
    });
  }

  // Special ids go up to this many beyond the ranks (Moonlight has 256).
  static constexpr std::int64_t kMaxSpecialTokens = 1 << 16;

  // The special tokens of a Hugging Face tokenizer_config.json (see load_dir).
  static SpecialTokens read_tokenizer_config(const std::filesystem::path& file, std::int32_t num_ranks) {
    const auto fail = [&](const std::string& what) {
      return muon::FileError("'" + file.string() + "': " + what);
    };
    const nlohmann::json config = muon::io::read_json_file(file, "'" + file.string() + "'");
    std::map<std::int32_t, std::string> named;
    if (config.contains("added_tokens_decoder")) {
      const nlohmann::json& decoder = config["added_tokens_decoder"];
      if (!decoder.is_object()) throw fail("'added_tokens_decoder' is not an object");
      for (const auto& [key, entry] : decoder.items()) {
        std::int32_t id = -1;
        const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
        if (ec != std::errc{} || end != key.data() + key.size() || id < num_ranks) {
          throw fail("'added_tokens_decoder' key '" + key + "' is not an id >= " +
                     std::to_string(num_ranks) + " (the number of ranks)");
        }
        // Ids between the ranks and the last named one are all materialised (reserved names), so
        // an id far beyond the ranks would allocate without bound (2^31 - 1 took gigabytes).
        if (std::int64_t{id} - num_ranks >= kMaxSpecialTokens) {
          throw fail("'added_tokens_decoder' key '" + key + "' is more than " + std::to_string(kMaxSpecialTokens) +
                     " ids beyond the " + std::to_string(num_ranks) + " ranks (the most special tokens taken)");
        }
        if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string()) {
          throw fail("'added_tokens_decoder'.'" + key + "' has no string 'content'");
        }
        named[id] = entry["content"].get<std::string>();
      }
    }
    SpecialTokens specials;
    const std::int32_t last = std::max(num_ranks + SpecialTokens::num_reserved - 1,
                                       named.empty() ? 0 : named.rbegin()->first);
    for (std::int32_t id = num_ranks; id <= last; ++id) {
      const auto it = named.find(id);
      specials.tokens.push_back({it != named.end() ? it->second : SpecialTokens::reserved_name(id), id});
    }
    // bos_token / eos_token: a string, an AddedToken object {"content": ...}, or null.
    const auto token_text = [&](const char* field) -> std::string {
      if (!config.contains(field) || config[field].is_null()) return "";
      const nlohmann::json& value = config[field];
      if (value.is_string()) return value.get<std::string>();
      if (value.is_object() && value.contains("content") && value["content"].is_string()) {
        return value["content"].get<std::string>();
      }
      throw fail(std::string("'") + field + "' is neither a string, null, nor {\"content\": ...}");
    };
    specials.bos = token_text("bos_token");
    specials.eos = token_text("eos_token");
    return specials;
  }

  RankMap ranks_;
  std::int32_t num_ranks_;
  std::vector<std::string> bytes_;  // by id: ranks, then special tokens (gaps empty)
  std::vector<bool> is_special_;
  std::map<std::string, std::int32_t, std::less<>> special_ids_;
  std::array<std::vector<std::string>, 256> specials_by_first_byte_;
  std::optional<std::int32_t> bos_;
  std::optional<std::int32_t> eos_;
  Pretokenizer pretokenizer_;
};

}  // namespace moonlight
