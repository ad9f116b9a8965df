// moonlight/utf8_stream.hpp: turns streamed token bytes into printable text.
//
// A byte-level BPE token can end in the middle of a UTF-8 character (a Chinese character or an
// emoji is often split over two or three tokens). Utf8Stream passes bytes through as tokens
// arrive but holds back a trailing incomplete sequence until the next token completes it, so a
// terminal never receives half a character. Invalid bytes are passed through, not repaired.
//
//   moonlight::Utf8Stream out;
//   std::cout << out.push(tok.token_bytes(id)) << std::flush;   // per token
//   std::cout << out.flush();                                    // at the end
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

namespace moonlight {

class Utf8Stream {
 public:
  // Returns the bytes that can be shown now.
  [[nodiscard]] std::string push(std::string_view bytes) {
    pending_ += bytes;
    const std::size_t ready = complete_prefix(pending_);
    std::string out = pending_.substr(0, ready);
    pending_.erase(0, ready);
    return out;
  }

  // Returns whatever is held back (an incomplete sequence at the end of the stream).
  [[nodiscard]] std::string flush() { return std::exchange(pending_, {}); }

 private:
  // Length of `s` without a trailing incomplete UTF-8 sequence.
  static std::size_t complete_prefix(std::string_view s) {
    const std::size_t n = s.size();
    // The last lead (non-continuation) byte among the final 4: only its sequence can be open.
    for (std::size_t back = 1; back <= 4 && back <= n; ++back) {
      const auto c = static_cast<unsigned char>(s[n - back]);
      if ((c & 0xC0) == 0x80) continue;
      const std::size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      return back < need ? n - back : n;
    }
    return n;
  }

  std::string pending_;
};

}  // namespace moonlight
