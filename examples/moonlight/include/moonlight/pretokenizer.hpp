// moonlight/pretokenizer.hpp: Moonlight's pre-tokenisation regex, on PCRE2.
//
// Before byte-pair merging, tiktoken cuts text into pieces with a regex (`pat_str`); merges never
// cross a piece boundary. `Pretokenizer` reproduces the cuts that tiktoken makes with Moonlight's
// pattern (docs/moonlight-architecture.md §7.2), byte for byte, on any valid UTF-8 text.
//
//   moonlight::Pretokenizer pre;
//   for (std::string_view piece : pre.split("Hello world")) ...   // "Hello", " world"
//
// Invalid UTF-8: tiktoken only ever sees valid text (a Python str, a Rust &str), so it has no
// behaviour to copy. Here each byte that does not start a valid UTF-8 sequence (an overlong form,
// a surrogate, a stray continuation byte, a truncated sequence, a byte above 0xF4) is a piece of
// its own, and the regex runs on the valid runs between such bytes as if each run were a whole
// text. The bytes are thus kept, and a tokenizer encodes each of them as its single-byte token,
// so decode(encode(x)) == x for every byte string.
//
// Unicode version: Debian 12's PCRE2 10.42 has Unicode 14 tables; tiktoken 0.12's Rust regex has
// newer ones. Characters assigned after Unicode 14 (a few thousand, e.g. CJK Extension H) may be
// classified differently; everything older splits identically (the whole fortune corpus, 4.8 MB
// of English and Chinese, gives tiktoken's 1,432,809 ids exactly).
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <muon/error.hpp>

namespace moonlight {

static_assert(PCRE2_CODE_UNIT_WIDTH == 8, "moonlight needs the 8-bit PCRE2 library (libpcre2-8)");

// Moonlight's pat_str exactly as its tokenizer code writes it (Python `regex` / Rust `regex`
// syntax). PCRE2 cannot compile it; `pcre2_pattern` below is its translation.
inline constexpr std::string_view moonlight_pat_str =
    R"([\p{Han}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace detail {

// The same pattern for PCRE2, with three changes, each so that PCRE2 matches what tiktoken's Rust
// regex engine matches:
// - Class intersection `[X&&[^\p{Han}]]` does not exist in PCRE2; `(?:(?!\p{sc:Han})[X])` is
//   the same set: a character of X that is not Han.
// - `\p{Han}` is the Script property in Rust's regex, but PCRE2 ≥ 10.40 reads a bare script name
//   as Script_Extensions, which adds CJK punctuation such as 。 and 、 to Han; `\p{sc:Han}` is
//   the Script property.
// - `\s` is Unicode White_Space in Rust's regex; in PCRE2 with UCP it also matches U+180E
//   (MONGOLIAN VOWEL SEPARATOR). The class is therefore spelled out as the White_Space set.
// `(?i:'s)` matches 's, 'S and 'ſ (U+017F) in both engines (simple case folding).
#define MOONLIGHT_WS R"(\t-\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})"
#define MOONLIGHT_UPPER R"((?:(?!\p{sc:Han})[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]))"
#define MOONLIGHT_LOWER R"((?:(?!\p{sc:Han})[\p{Ll}\p{Lm}\p{Lo}\p{M}]))"
#define MOONLIGHT_CONTRACTION R"((?i:'s|'t|'re|'ve|'m|'ll|'d))"
inline constexpr const char* pcre2_pattern =
    R"(\p{sc:Han}+)"
    R"(|[^\r\n\p{L}\p{N}]?)" MOONLIGHT_UPPER "*" MOONLIGHT_LOWER "+" MOONLIGHT_CONTRACTION "?"
    R"(|[^\r\n\p{L}\p{N}]?)" MOONLIGHT_UPPER "+" MOONLIGHT_LOWER "*" MOONLIGHT_CONTRACTION "?"
    R"(|\p{N}{1,3})"
    R"(| ?[^)" MOONLIGHT_WS R"(\p{L}\p{N}]+[\r\n]*)"
    "|[" MOONLIGHT_WS R"(]*[\r\n]+)"
    "|[" MOONLIGHT_WS "]+(?![^" MOONLIGHT_WS "])"
    "|[" MOONLIGHT_WS "]+";
#undef MOONLIGHT_WS
#undef MOONLIGHT_UPPER
#undef MOONLIGHT_LOWER
#undef MOONLIGHT_CONTRACTION

// Length of the well-formed UTF-8 sequence at the start of `s` (Unicode Table 3-7: no overlong
// forms, no surrogates, nothing above U+10FFFF), or 0 if `s` does not start with one. PCRE2's own
// UTF check accepts exactly these sequences.
inline std::size_t utf8_sequence_length(std::string_view s) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto in = [&](std::size_t i, unsigned lo, unsigned hi) {
    return i < s.size() && byte(i) >= lo && byte(i) <= hi;
  };
  const unsigned b0 = byte(0);
  if (b0 < 0x80) return 1;
  if (b0 >= 0xC2 && b0 <= 0xDF) return in(1, 0x80, 0xBF) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    const unsigned lo = b0 == 0xE0 ? 0xA0 : 0x80;
    const unsigned hi = b0 == 0xED ? 0x9F : 0xBF;
    return in(1, lo, hi) && in(2, 0x80, 0xBF) ? 3 : 0;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    const unsigned lo = b0 == 0xF0 ? 0x90 : 0x80;
    const unsigned hi = b0 == 0xF4 ? 0x8F : 0xBF;
    return in(1, lo, hi) && in(2, 0x80, 0xBF) && in(3, 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

inline std::string pcre2_error_message(int code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(code, buffer, sizeof buffer);
  return n < 0 ? "PCRE2 error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buffer));
}

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};

// What pcre2_match needs besides the compiled pattern: match data, a match context and a JIT
// stack. They must not be shared between threads, and making them costs more than encoding a
// short text (an mmap for the JIT stack), so each thread keeps one set (see `match_state`).
class MatchState {
 public:
  MatchState()
      // The pattern has no capture groups: one ovector pair (the whole match) is all it uses.
      : data_(pcre2_match_data_create(1, nullptr)),
        context_(pcre2_match_context_create(nullptr)),
        // The default JIT stack (32 KiB on the machine stack) overflows on very long pieces,
        // e.g. a word of 100,000 letters: each repetition of a lookahead group keeps a frame.
        jit_stack_(pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, nullptr)) {
    if (data_ == nullptr || context_ == nullptr || jit_stack_ == nullptr) {
      throw muon::Error("moonlight::Pretokenizer: out of memory for PCRE2 match data");
    }
    pcre2_jit_stack_assign(context_, nullptr, jit_stack_);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
  ~MatchState() {
    pcre2_jit_stack_free(jit_stack_);
    pcre2_match_context_free(context_);
    pcre2_match_data_free(data_);
  }
  pcre2_match_data* data() const { return data_; }
  pcre2_match_context* context() const { return context_; }

 private:
  pcre2_match_data* data_;
  pcre2_match_context* context_;
  pcre2_jit_stack* jit_stack_;
};

// This thread's MatchState. Reentrant use (an on_piece callback that splits another text) is
// safe: a match's results are copied out before any callback runs.
inline MatchState& match_state() {
  thread_local MatchState state;
  return state;
}

}  // namespace detail

class Pretokenizer {
 public:
  // Compiles the pattern, with the JIT where PCRE2 has one. Copies share the compiled pattern,
  // which PCRE2 allows to be used by several threads at once.
  Pretokenizer() {
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(detail::pcre2_pattern),
                                     PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &error, &offset,
                                     nullptr);
    if (code == nullptr) {
      throw muon::Error("moonlight::Pretokenizer: PCRE2 rejected the pattern at offset " +
                        std::to_string(offset) + ": " + detail::pcre2_error_message(error));
    }
    code_.reset(code, detail::CodeDeleter{});
    // Without a JIT (PCRE2 built without it, or no executable memory) the interpreter gives the
    // same matches, only slower.
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }

  [[nodiscard]] bool uses_jit() const noexcept { return jit_; }

  // Calls on_piece(std::string_view) for each piece of `text`, in order; the pieces concatenate
  // to `text`.
  template <class OnPiece>
  void for_each_piece(std::string_view text, OnPiece&& on_piece) const {
    detail::MatchState& state = detail::match_state();
    std::size_t run_begin = 0;
    std::size_t i = 0;
    while (i < text.size()) {
      const std::size_t length = detail::utf8_sequence_length(text.substr(i));
      if (length != 0) {
        i += length;
        continue;
      }
      split_valid(text.substr(run_begin, i - run_begin), state, on_piece);
      on_piece(text.substr(i, 1));
      run_begin = ++i;
    }
    split_valid(text.substr(run_begin), state, on_piece);
  }

  [[nodiscard]] std::vector<std::string_view> split(std::string_view text) const {
    std::vector<std::string_view> pieces;
    for_each_piece(text, [&](std::string_view piece) { pieces.push_back(piece); });
    return pieces;
  }

 private:
  // `run` is valid UTF-8 (checked by the caller, hence PCRE2_NO_UTF_CHECK: PCRE2 would otherwise
  // re-check the whole subject on every call, quadratic in the length of the run).
  template <class OnPiece>
  void split_valid(std::string_view run, detail::MatchState& state, OnPiece& on_piece) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(run.data());
    std::size_t offset = 0;
    while (offset < run.size()) {
      const int rc = pcre2_match(code_.get(), subject, run.size(), offset, PCRE2_NO_UTF_CHECK,
                                 state.data(), state.context());
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        throw muon::Error("moonlight::Pretokenizer: PCRE2 matching failed at byte " +
                          std::to_string(offset) + ": " + detail::pcre2_error_message(rc));
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data());
      const std::size_t begin = ovector[0];
      const std::size_t end = ovector[1];
      // Every alternative needs at least one character and some alternative matches every
      // character, so matches are non-empty and leave no gaps; a gap would still be kept whole.
      if (begin > offset) on_piece(run.substr(offset, begin - offset));
      on_piece(run.substr(begin, end - begin));
      offset = end;
    }
    if (offset < run.size()) on_piece(run.substr(offset));
  }

  std::shared_ptr<pcre2_code> code_;
  bool jit_ = false;
};

}  // namespace moonlight
