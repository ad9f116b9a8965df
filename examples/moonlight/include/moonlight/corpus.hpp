// moonlight/corpus.hpp: training data. UTF-8 text files, tokenized with the model's tokenizer, or
// pre-tokenized shards become one token stream (documents joined by the eos token), which is
// packed into fixed-length sequences and split into training and validation sequences.
//
//   auto files = moonlight::expand_corpus_paths({"corpus/"});          // directories: their files
//   moonlight::TokenStream stream = moonlight::read_corpus(files, tokenizer, {.document_separator = "%"});
//   moonlight::PackedSequences data(std::move(stream), /*seq_len=*/128, /*val_fraction=*/0.05);
//   std::span<const std::int32_t> s = data.train(order.at(k));        // seq_len + 1 tokens
//
// A shard (`.bin`) is the 8 bytes "MOONTOK1", a little-endian uint64 token count, then that many
// little-endian uint32 token ids; `moonlight tokenize` writes them. Any problem with the corpus (a
// missing file, text that is not UTF-8, a shard that is truncated or holds an id outside the
// vocabulary, too few tokens for one sequence) is a CorpusError naming the file and what to do.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moonlight/tokenizer.hpp"
#include "muon/error.hpp"
#include "muon/io/atomic_file.hpp"

namespace moonlight {

class CorpusError : public muon::FileError {
 public:
  using FileError::FileError;
};

inline constexpr std::string_view kShardMagic = "MOONTOK1";
// Shards (like safetensors files) are read and written in the machine's byte order.
static_assert(std::endian::native == std::endian::little, "token shards are little-endian");

// Files as given; a directory stands for its regular, non-hidden files, sorted by name (not
// recursive), so that the same directory always gives the same stream.
inline std::vector<std::filesystem::path> expand_corpus_paths(std::span<const std::filesystem::path> paths) {
  namespace fs = std::filesystem;
  if (paths.empty()) throw CorpusError("no corpus given: pass --data with text files, shards or directories");
  std::vector<fs::path> files;
  for (const fs::path& p : paths) {
    std::error_code ec;
    const fs::file_status status = fs::status(p, ec);
    if (!fs::exists(status)) throw CorpusError("corpus '" + p.string() + "' does not exist; check the --data path");
    if (!fs::is_directory(status)) {
      files.push_back(p);
      continue;
    }
    std::vector<fs::path> inside;
    for (const fs::directory_entry& e : fs::directory_iterator(p)) {
      if (e.is_regular_file() && !e.path().filename().string().starts_with(".")) inside.push_back(e.path());
    }
    if (inside.empty()) throw CorpusError("corpus directory '" + p.string() + "' holds no files");
    std::ranges::sort(inside);
    files.insert(files.end(), inside.begin(), inside.end());
  }
  return files;
}

// The offset of the first byte that breaks UTF-8 (overlong forms, surrogates and code points above
// U+10FFFF included), or nothing when all of `text` is valid.
[[nodiscard]] inline std::optional<std::size_t> first_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = s[i];
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) len = 1, cp = c;
    else if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07;
    else return i;
    if (i + len > text.size()) return i;
    for (std::size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    static constexpr std::uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinimum[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += len;
  }
  return std::nullopt;
}

struct CorpusOptions {
  // A line holding exactly this text ends a document (Debian's fortune files separate entries
  // with "%"); empty: each file is one document.
  std::string document_separator{};
};

struct TokenStream {
  std::vector<std::int32_t> tokens;  // documents, each followed by the eos token
  std::int64_t documents = 0;
  std::int64_t text_bytes = 0;
  std::string source;  // the corpus, for messages
};

namespace detail {

inline std::string read_whole_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CorpusError("cannot open corpus file '" + path.string() + "'; check that it exists and is readable");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw CorpusError("cannot read corpus file '" + path.string() + "'");
  return bytes;
}

// The documents of one text file: split at separator lines, without empty ones.
inline std::vector<std::string_view> split_documents(std::string_view text, const std::string& separator) {
  std::vector<std::string_view> docs;
  const auto keep = [&](std::string_view d) {
    if (d.find_first_not_of(" \t\r\n") != std::string_view::npos) docs.push_back(d);
  };
  if (separator.empty()) {
    keep(text);
    return docs;
  }
  std::size_t begin = 0, line = 0;
  while (line < text.size()) {
    const std::size_t end = std::min(text.find('\n', line), text.size());
    if (text.substr(line, end - line) == separator) {
      keep(text.substr(begin, line - begin));
      begin = std::min(end + 1, text.size());
    }
    line = end + 1;
  }
  keep(text.substr(begin));
  return docs;
}

inline void append_shard(const std::filesystem::path& path, std::int32_t vocab_size, TokenStream& out) {
  const std::string bytes = read_whole_file(path);
  const auto fail = [&](const std::string& what) {
    return CorpusError("token shard '" + path.string() + "' " + what + "; rewrite it with `moonlight tokenize`");
  };
  if (bytes.size() < 16 || std::string_view(bytes).substr(0, 8) != kShardMagic) {
    throw fail("does not start with \"MOONTOK1\" (is it a shard? text files must not end in .bin)");
  }
  std::uint64_t count = 0;
  std::memcpy(&count, bytes.data() + 8, 8);
  if (count > (bytes.size() - 16) / 4 || bytes.size() != 16 + count * 4) {
    throw fail("holds " + std::to_string(bytes.size()) + " bytes, but its header announces " + std::to_string(count) +
               " tokens (" + std::to_string(16 + count * 4) + " bytes): it is truncated or corrupt");
  }
  const std::size_t first = out.tokens.size();
  out.tokens.resize(first + count);
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t id = 0;
    std::memcpy(&id, bytes.data() + 16 + 4 * i, 4);
    if (id >= static_cast<std::uint32_t>(vocab_size)) {
      throw fail("holds token id " + std::to_string(id) + " at position " + std::to_string(i) +
                 ", outside the model's vocabulary of " + std::to_string(vocab_size));
    }
    out.tokens[first + i] = static_cast<std::int32_t>(id);
  }
}

}  // namespace detail

// Reads `files` in order: `.bin` files as shards (taken as they are), anything else as UTF-8 text.
// Text is encoded as ordinary text (special-token strings in it stay text) and each document is
// followed by the tokenizer's eos token. `vocab_size` bounds the ids of shards.
[[nodiscard]] inline TokenStream read_corpus(std::span<const std::filesystem::path> files, const Tokenizer& tokenizer,
                                             const CorpusOptions& options = {}) {
  const std::optional<std::int32_t> eos = tokenizer.eos_id();
  if (!eos) throw muon::InvalidArgument("the tokenizer has no eos token; training joins documents with it");
  TokenStream out;
  for (const std::filesystem::path& file : files) {
    if (!out.source.empty()) out.source += ", ";
    out.source += file.string();
    if (file.extension() == ".bin") {
      detail::append_shard(file, tokenizer.vocab_size(), out);
      continue;
    }
    const std::string text = detail::read_whole_file(file);
    if (const auto bad = first_invalid_utf8(text)) {
      throw CorpusError("corpus file '" + file.string() + "' is not UTF-8 text (byte " + std::to_string(*bad) +
                        "); pass text files, or shards ending in .bin");
    }
    out.text_bytes += static_cast<std::int64_t>(text.size());
    for (const std::string_view doc : detail::split_documents(text, options.document_separator)) {
      const std::vector<std::int32_t> ids = tokenizer.encode(doc);
      out.tokens.insert(out.tokens.end(), ids.begin(), ids.end());
      out.tokens.push_back(*eos);
      ++out.documents;
    }
  }
  if (out.tokens.empty()) {
    throw CorpusError("corpus " + out.source + " is empty: it holds no text and no tokens; pass a non-empty corpus");
  }
  return out;
}

// Writes `tokens` as a shard, atomically (temp file, fsync, rename).
inline void write_shard(const std::filesystem::path& path, std::span<const std::int32_t> tokens) {
  std::string bytes(kShardMagic);
  const auto put = [&](auto value) {
    bytes.append(reinterpret_cast<const char*>(&value), sizeof value);
  };
  put(static_cast<std::uint64_t>(tokens.size()));
  for (const std::int32_t id : tokens) put(static_cast<std::uint32_t>(id));
  muon::io::write_file_atomically(path, bytes, "token shard");
}

// The stream cut into sequences of seq_len + 1 tokens (inputs are the first seq_len, targets the
// last seq_len), consecutive sequences sharing one token so that every token is predicted once.
// Every k-th sequence (k = round(1 / val_fraction)) is held out for validation, spread over the
// whole corpus rather than taken from its end, which may be one language or one source.
class PackedSequences {
 public:
  PackedSequences(TokenStream stream, std::int64_t seq_len, double val_fraction)
      : stream_(std::move(stream)), seq_len_(seq_len) {
    if (seq_len < 1) throw muon::InvalidArgument("seq_len must be >= 1, got " + std::to_string(seq_len));
    if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
      throw muon::InvalidArgument("val_fraction must be in [0, 1), got " + std::to_string(val_fraction));
    }
    const auto n = static_cast<std::int64_t>(stream_.tokens.size());
    const std::int64_t count = (n - 1) / seq_len;
    if (count < 1) {
      throw CorpusError("corpus " + stream_.source + " has " + std::to_string(n) + " tokens, shorter than one sequence (" +
                        std::to_string(seq_len + 1) + " tokens); add text or lower seq_len");
    }
    const std::int64_t every = val_fraction > 0.0 ? std::max<std::int64_t>(2, std::llround(1.0 / val_fraction)) : 0;
    for (std::int64_t i = 0; i < count; ++i) {
      ((every != 0 && i % every == every - 1) ? val_ : train_).push_back(i);
    }
  }

  [[nodiscard]] std::int64_t seq_len() const { return seq_len_; }
  [[nodiscard]] std::int64_t train_count() const { return std::ssize(train_); }
  [[nodiscard]] std::int64_t val_count() const { return std::ssize(val_); }
  [[nodiscard]] const TokenStream& stream() const { return stream_; }
  [[nodiscard]] std::span<const std::int32_t> train(std::int64_t i) const { return sequence(train_.at(i)); }
  [[nodiscard]] std::span<const std::int32_t> val(std::int64_t i) const { return sequence(val_.at(i)); }

 private:
  [[nodiscard]] std::span<const std::int32_t> sequence(std::int64_t index) const {
    return std::span<const std::int32_t>(stream_.tokens).subspan(static_cast<std::size_t>(index * seq_len_),
                                                                 static_cast<std::size_t>(seq_len_ + 1));
  }

  TokenStream stream_;
  std::int64_t seq_len_;
  std::vector<std::int64_t> train_, val_;
};

// The order a run visits the training sequences: epoch e is a shuffle seeded by (seed, e), so the
// k-th sequence of a run is a function of (seed, k) alone and a resumed run continues exactly
// where an uninterrupted one would be.
class SequenceOrder {
 public:
  SequenceOrder(std::int64_t count, std::uint64_t seed) : count_(count), seed_(seed) {
    if (count < 1) throw muon::InvalidArgument("SequenceOrder needs at least one sequence");
  }

  [[nodiscard]] std::int64_t at(std::int64_t k) {
    const std::int64_t epoch = k / count_;
    if (epoch != epoch_) shuffle(epoch);
    return permutation_[static_cast<std::size_t>(k % count_)];
  }

 private:
  void shuffle(std::int64_t epoch) {
    permutation_.resize(static_cast<std::size_t>(count_));
    std::iota(permutation_.begin(), permutation_.end(), std::int64_t{0});
    std::seed_seq seq{static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32),
                      static_cast<std::uint32_t>(epoch)};
    std::mt19937_64 rng(seq);
    // Fisher–Yates with a modulo draw: the bias is below count/2^64 and the result does not
    // depend on the standard library's distribution algorithms.
    for (std::size_t i = permutation_.size(); i > 1; --i) std::swap(permutation_[i - 1], permutation_[rng() % i]);
    epoch_ = epoch;
  }

  std::int64_t count_;
  std::uint64_t seed_;
  std::int64_t epoch_ = -1;
  std::vector<std::int64_t> permutation_;
};

}  // namespace moonlight
