// moonlight/tiktoken_file.hpp: read and write tiktoken BPE rank files (`tiktoken.model`).
//
// One token per line: the token's bytes in standard base64 (with padding), one space, its rank
// in decimal. This is what tiktoken's `load_tiktoken_bpe` reads; like it, empty lines are skipped.
// Ranks must be exactly 0..N-1, each once, and no two lines may hold the same bytes.
//
//   std::vector<std::string> tokens = moonlight::read_rank_file("tiktoken.model");  // by rank
//   moonlight::write_rank_file("out.tiktoken", tokens);
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <vector>

#include <muon/error.hpp>

namespace moonlight {

namespace detail {

inline constexpr std::string_view base64_alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace detail

inline std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::size_t n = std::min<std::size_t>(3, bytes.size() - i);
    std::uint32_t group = 0;
    for (std::size_t k = 0; k < 3; ++k) {
      group = group << 8 | (k < n ? static_cast<unsigned char>(bytes[i + k]) : 0u);
    }
    for (std::size_t k = 0; k < 4; ++k) {
      out += k <= n ? detail::base64_alphabet[(group >> (18 - 6 * k)) & 63] : '=';
    }
  }
  return out;
}

// Strict standard base64: length a multiple of 4, padding only at the end, no other characters,
// and unused bits of the last group zero (so each byte string has exactly one spelling).
inline std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::array<int, 256> value{};
  value.fill(-1);
  for (std::size_t i = 0; i < detail::base64_alphabet.size(); ++i) {
    value[static_cast<unsigned char>(detail::base64_alphabet[i])] = static_cast<int>(i);
  }
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    std::size_t pad = 0;
    if (last) pad = text[i + 3] != '=' ? 0 : text[i + 2] != '=' ? 1 : 2;
    std::uint32_t group = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      int v = 0;
      if (k < 4 - pad) {
        v = value[static_cast<unsigned char>(text[i + k])];
        if (v < 0) return std::nullopt;
      }
      group = group << 6 | static_cast<std::uint32_t>(v);
    }
    if ((pad == 1 && (group & 0xFF) != 0) || (pad == 2 && (group & 0xFFFF) != 0)) return std::nullopt;
    for (std::size_t k = 0; k < 3 - pad; ++k) out += static_cast<char>((group >> (16 - 8 * k)) & 0xFF);
  }
  return out;
}

// Reads a rank file into its tokens, indexed by rank. Throws muon::FileError naming the file
// (and the line, for a malformed line, a duplicate rank or duplicate bytes).
inline std::vector<std::string> read_rank_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw muon::FileError("cannot open tiktoken rank file '" + path.string() +
                          "': " + std::generic_category().message(errno));
  }
  const auto fail = [&](std::size_t line, const std::string& what) -> muon::FileError {
    return muon::FileError("tiktoken rank file '" + path.string() + "', line " +
                           std::to_string(line) + ": " + what);
  };
  // Ranks are 0..N-1, one line each, and a line takes at least 6 bytes ("QQ== 0"): a rank of a
  // sixth of the file's size or more cannot belong to a valid file, and is refused before the
  // tables grow to it (a 16-byte file naming rank 2e9 would otherwise allocate gigabytes).
  std::error_code size_error;
  const std::uintmax_t file_bytes = std::filesystem::file_size(path, size_error);
  const std::uintmax_t rank_limit = size_error ? 0 : file_bytes / 6 + 1;
  std::vector<std::string> tokens;
  std::vector<std::size_t> line_of_rank;  // 0 = rank not seen yet
  std::unordered_map<std::string, std::size_t> line_of_token;
  std::string line;
  std::size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const std::size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
      throw fail(number, "expected '<base64 token> <rank>', got '" + line + "'");
    }
    const std::string_view encoded(line.data(), space);
    const std::string_view rank_text(line.data() + space + 1, line.size() - space - 1);
    std::optional<std::string> token = base64_decode(encoded);
    if (!token || token->empty()) {
      throw fail(number, "'" + std::string(encoded) + "' is not a non-empty standard base64 token");
    }
    std::int32_t rank = -1;
    const auto [end, ec] = std::from_chars(rank_text.data(), rank_text.data() + rank_text.size(), rank);
    if (ec != std::errc{} || end != rank_text.data() + rank_text.size() || rank < 0) {
      throw fail(number, "rank '" + std::string(rank_text) + "' is not an integer in [0, 2^31)");
    }
    const auto r = static_cast<std::size_t>(rank);
    if (r >= rank_limit) {
      throw fail(number, "rank " + std::to_string(rank) + " cannot occur in a file of " + std::to_string(file_bytes) +
                             " bytes (ranks are 0..N-1, one line each)");
    }
    if (r >= line_of_rank.size()) {
      line_of_rank.resize(r + 1, 0);
      tokens.resize(r + 1);
    }
    if (line_of_rank[r] != 0) {
      throw fail(number, "rank " + std::to_string(rank) + " was already given on line " +
                             std::to_string(line_of_rank[r]));
    }
    const auto [it, inserted] = line_of_token.emplace(*token, number);
    if (!inserted) {
      throw fail(number, "token '" + std::string(encoded) + "' was already given on line " +
                             std::to_string(it->second));
    }
    line_of_rank[r] = number;
    tokens[r] = std::move(*token);
  }
  if (in.bad()) throw muon::FileError("error reading tiktoken rank file '" + path.string() + "'");
  for (std::size_t r = 0; r < line_of_rank.size(); ++r) {
    if (line_of_rank[r] == 0) {
      throw muon::FileError("tiktoken rank file '" + path.string() + "' has no token of rank " +
                            std::to_string(r) + " but has rank " +
                            std::to_string(line_of_rank.size() - 1) + "; ranks must be 0..N-1");
    }
  }
  if (tokens.empty()) throw muon::FileError("tiktoken rank file '" + path.string() + "' is empty");
  return tokens;
}

// Writes tokens (indexed by rank) as a rank file, atomically: a temporary file in the same
// directory is written, flushed to disk and renamed over `path`, so readers never see half a file.
inline void write_rank_file(const std::filesystem::path& path, std::span<const std::string> tokens) {
  std::string text;
  for (std::size_t rank = 0; rank < tokens.size(); ++rank) {
    text += base64_encode(tokens[rank]);
    text += ' ';
    text += std::to_string(rank);
    text += '\n';
  }
  const std::string temp = path.string() + ".tmp." + std::to_string(::getpid());
  const auto fail = [&](const char* step) {
    const int err = errno;
    ::unlink(temp.c_str());
    return muon::FileError("cannot write tiktoken rank file '" + path.string() + "': " + step +
                           " '" + temp + "' failed: " + std::generic_category().message(err));
  };
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) throw fail("creating");
  std::size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const muon::FileError error = fail("writing");
      ::close(fd);
      throw error;
    }
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const muon::FileError error = fail("fsync of");
    ::close(fd);
    throw error;
  }
  if (::close(fd) != 0) throw fail("closing");
  if (::rename(temp.c_str(), path.c_str()) != 0) throw fail("renaming");
}

}  // namespace moonlight
