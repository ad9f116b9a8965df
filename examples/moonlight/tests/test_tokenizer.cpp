// Tests of the Moonlight tokenizer (moonlight/tokenizer.hpp and its parts): parity with the
// Python tiktoken package through tests/reference/fixtures/moonlight/tokenizer.json (written by
// tests/reference/make_tokenizer_fixtures.py), the chat template against jinja2, the BPE merge
// against a literal transcription of tiktoken's algorithm, invalid UTF-8, file errors, and the
// BPE trainer against its committed output. Every comparison is exact: token ids and bytes.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "moonlight/bpe.hpp"
#include "moonlight/bpe_trainer.hpp"
#include "moonlight/chat_template.hpp"
#include "moonlight/pretokenizer.hpp"
#include "moonlight/tiktoken_file.hpp"
#include "moonlight/tokenizer.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using moonlight::Tokenizer;
using Ids = std::vector<std::int32_t>;

namespace {

const fs::path fixture_dir = MOONLIGHT_FIXTURE_DIR;
const fs::path fortunes_rank_file = fs::path(MOONLIGHT_TOKENIZER_DIR) / "fortunes.tiktoken";

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in, "cannot open " << path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

const nlohmann::json& fixture() {
  static const nlohmann::json json = nlohmann::json::parse(read_bytes(fixture_dir / "tokenizer.json"));
  return json;
}

const Tokenizer& fortunes() {
  static const Tokenizer tokenizer = Tokenizer::load(fortunes_rank_file);
  return tokenizer;
}

// A case's text: `text`, or the concatenation of its [unit, repeat] `parts`.
std::string case_text(const nlohmann::json& c) {
  if (c.contains("text")) return c["text"].get<std::string>();
  std::string text;
  for (const auto& part : c["parts"]) {
    for (int i = 0; i < part[1].get<int>(); ++i) text += part[0].get<std::string>();
  }
  return text;
}

// A fresh directory under the system temp directory, removed with its contents.
struct TempDir : muon::test::TempDir {
  TempDir() : muon::test::TempDir("moonlight_tokenizer") {}
};

void write_text(const fs::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The 256 single-byte lines of a rank file (rank b = byte b), for hand-made files.
std::string byte_lines() {
  std::string text;
  for (int b = 0; b < 256; ++b) {
    text += moonlight::base64_encode(std::string(1, static_cast<char>(b))) + " " + std::to_string(b) + "\n";
  }
  return text;
}

// Checks that `f` throws E and that its message contains every one of `parts`.
template <class E, class F>
void check_error(F&& f, std::initializer_list<std::string_view> parts) {
  try {
    f();
    FAIL("no exception");
  } catch (const E& e) {
    const std::string message = e.what();
    for (const std::string_view part : parts) {
      CHECK_MESSAGE(message.find(part) != std::string::npos, "'" << message << "' lacks '" << part << "'");
    }
  }
}

// tiktoken's _byte_pair_merge (src/lib.rs), transcribed literally: rescan every pair after each
// merge, lowest rank first, leftmost first among equal ranks. The reference for encode_piece.
Ids tiktoken_byte_pair_encode(std::string_view piece, const moonlight::RankMap& ranks) {
  if (const auto it = ranks.find(piece); it != ranks.end()) return {it->second};
  constexpr std::int32_t none = std::numeric_limits<std::int32_t>::max();
  const auto rank_of = [&](std::size_t begin, std::size_t end) {
    const auto it = ranks.find(piece.substr(begin, end - begin));
    return it == ranks.end() ? none : it->second;
  };
  std::vector<std::pair<std::size_t, std::int32_t>> parts;  // (start, rank of pair starting here)
  for (std::size_t i = 0; i + 1 < piece.size(); ++i) parts.emplace_back(i, rank_of(i, i + 2));
  parts.emplace_back(piece.size() - 1, none);
  parts.emplace_back(piece.size(), none);
  const auto get_rank = [&](std::size_t i) {
    return i + 3 < parts.size() ? rank_of(parts[i].first, parts[i + 3].first) : none;
  };
  while (true) {
    std::size_t best = 0;
    std::int32_t min_rank = none;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      if (parts[i].second < min_rank) {
        min_rank = parts[i].second;
        best = i;
      }
    }
    if (min_rank == none) break;
    if (best > 0) parts[best - 1].second = get_rank(best - 1);
    parts[best].second = get_rank(best);
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  Ids ids;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) ids.push_back(rank_of(parts[i].first, parts[i + 1].first));
  return ids;
}

}  // namespace

TEST_CASE("the fixture was made with Moonlight's pat_str, special tokens and our rank file") {
  const nlohmann::json& f = fixture();
  CHECK(f["pat_str"].get<std::string>() == moonlight::moonlight_pat_str);
  CHECK(f["rank_file"].get<std::string>() == "examples/moonlight/tokenizer/fortunes.tiktoken");
  const Tokenizer& tok = fortunes();
  CHECK(f["num_ranks"].get<std::int32_t>() == tok.num_ranks());
  CHECK(tok.num_ranks() == 8192);
  CHECK(tok.vocab_size() == 8192 + 256);
  CHECK(f["special_tokens"].size() == 256);
  for (const auto& [text, id] : f["special_tokens"].items()) {
    CHECK_MESSAGE(tok.special_id(text) == id.get<std::int32_t>(), text);
  }
  CHECK(tok.bos_id() == 8192);
  CHECK(tok.eos_id() == 8194);
  CHECK(tok.special_id("<|im_middle|>") == 8192 + 17);
  CHECK_FALSE(tok.special_id("<|im_start|>").has_value());
  CHECK(tok.is_special(8192 + 255));
  CHECK_FALSE(tok.is_special(8191));
  WARN(tok.pretokenizer().uses_jit());  // only speed depends on it: without a JIT, same matches
}

TEST_CASE("pre-tokenisation cuts every fixture text where tiktoken does") {
  const moonlight::Pretokenizer pre;
  int checked = 0;
  for (const auto& c : fixture()["cases"]) {
    if (!c.contains("pieces")) continue;
    const std::string text = case_text(c);
    const std::vector<std::string_view> pieces = pre.split(text);
    const auto expected = c["pieces"].get<std::vector<std::string>>();
    CHECK_MESSAGE(std::vector<std::string>(pieces.begin(), pieces.end()) == expected, c["name"]);
    ++checked;
  }
  CHECK(checked == 21);
}

TEST_CASE("encode equals tiktoken's encode_ordinary on every fixture text") {
  for (const auto& c : fixture()["cases"]) {
    CHECK_MESSAGE(fortunes().encode(case_text(c)) == c["ids"].get<Ids>(), c["name"]);
  }
}

TEST_CASE("encode_with_special equals tiktoken's encode(allowed_special='all')") {
  int with_specials = 0;
  for (const auto& c : fixture()["cases"]) {
    const auto& expected = c.contains("ids_with_special") ? c["ids_with_special"] : c["ids"];
    with_specials += c.contains("ids_with_special");
    CHECK_MESSAGE(fortunes().encode_with_special(case_text(c)) == expected.get<Ids>(), c["name"]);
  }
  CHECK(with_specials == 2);  // special_strings, special_lookalikes
  const Tokenizer& tok = fortunes();
  CHECK(tok.encode_with_special("[EOS]<|im_end|>") == Ids{8193, 8194});
  CHECK(tok.encode_with_special("<|reserved_token_8200|>") == Ids{8200});
  CHECK(tok.encode("[EOS]").size() > 1);
}

TEST_CASE("decode(encode(x)) == x, byte for byte, and token_bytes streams the same bytes") {
  const Tokenizer& tok = fortunes();
  for (const auto& c : fixture()["cases"]) {
    const std::string text = case_text(c);
    CHECK_MESSAGE(tok.decode(tok.encode(text)) == text, c["name"]);
    const Ids ids = tok.encode_with_special(text);
    CHECK_MESSAGE(tok.decode(ids) == text, c["name"]);
    std::string streamed;
    for (const std::int32_t id : ids) streamed += tok.token_bytes(id);
    CHECK(streamed == text);
  }
}

TEST_CASE("the chat template renders like jinja2 and encodes like tiktoken") {
  const Tokenizer& tok = fortunes();
  for (const auto& chat : fixture()["chats"]) {
    std::vector<moonlight::ChatMessage> messages;
    for (const auto& m : chat["messages"]) messages.push_back({m["role"], m["content"]});
    const std::string rendered = moonlight::apply_chat_template(messages, chat["add_generation_prompt"]);
    CHECK_MESSAGE(rendered == chat["rendered"].get<std::string>(), chat["name"]);
    CHECK_MESSAGE(tok.encode_with_special(rendered) == chat["ids"].get<Ids>(), chat["name"]);
  }
  // docs/moonlight-architecture.md §10: one user turn with the default system prompt.
  const moonlight::ChatMessage turn{"user", "{text}"};
  CHECK(moonlight::apply_chat_template({&turn, 1}, true) ==
        "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|><|im_user|>user<|im_middle|>"
        "{text}<|im_end|><|im_assistant|>assistant<|im_middle|>");
  const moonlight::ChatMessage tool{"tool", "42"};
  check_error<muon::InvalidArgument>([&] { (void)moonlight::apply_chat_template({&tool, 1}, false); },
                                     {"chat message 0", "'tool'"});
}

TEST_CASE("encode_piece merges exactly as tiktoken's byte_pair_merge") {
  // Hand-made ranks: lowest rank first, leftmost first among equal pairs.
  moonlight::RankMap ranks;
  for (int b = 0; b < 256; ++b) ranks.emplace(std::string(1, static_cast<char>(b)), b);
  ranks.emplace("ab", 300);
  ranks.emplace("bc", 256);
  ranks.emplace("aa", 257);
  ranks.emplace("aaa", 258);
  moonlight::BpeScratch scratch;
  const auto encode = [&](std::string_view piece) {
    Ids ids;
    moonlight::encode_piece(piece, ranks, ids, scratch);
    return ids;
  };
  CHECK(encode("abc") == Ids{'a', 256});          // bc (256) before ab (300)
  CHECK(encode("aaaa") == Ids{257, 257});          // leftmost aa first, then the next aa
  CHECK(encode("aaa") == Ids{258});                // the whole piece is a token
  CHECK(encode("aaaaa") == Ids{257, 258});         // aa|aa|a, then aa+a = aaa (258)
  CHECK(encode("x") == Ids{'x'});

  // Random pieces over a small alphabet and a random vocabulary of their substrings: the heap
  // and the literal rescan must agree everywhere.
  std::mt19937 gen(20261123);
  for (int round = 0; round < 20; ++round) {
    moonlight::RankMap vocab;
    for (int b = 0; b < 256; ++b) vocab.emplace(std::string(1, static_cast<char>(b)), b);
    std::uniform_int_distribution<int> letter(0, 2 + round % 3);
    const auto random_string = [&](std::size_t n) {
      std::string s;
      for (std::size_t i = 0; i < n; ++i) s += static_cast<char>('a' + letter(gen));
      return s;
    };
    std::vector<std::string> extra;
    for (int t = 0; t < 60; ++t) extra.push_back(random_string(2 + t % 5));
    std::shuffle(extra.begin(), extra.end(), gen);
    for (const std::string& s : extra) vocab.emplace(s, static_cast<std::int32_t>(vocab.size()));
    for (int p = 0; p < 50; ++p) {
      const std::string piece = random_string(1 + static_cast<std::size_t>(p) * 3);
      Ids ids;
      moonlight::encode_piece(piece, vocab, ids, scratch);
      CHECK_MESSAGE(ids == tiktoken_byte_pair_encode(piece, vocab), piece);
    }
  }
}

TEST_CASE("invalid UTF-8: each bad byte is its own piece and round-trips") {
  const moonlight::Pretokenizer pre;
  const auto split = [&](std::string_view text) {
    const auto views = pre.split(text);
    return std::vector<std::string>(views.begin(), views.end());
  };
  using Pieces = std::vector<std::string>;
  CHECK(split("ab\xff" "cd") == Pieces{"ab", "\xff", "cd"});
  CHECK(split("x \xc0\xaf y") == Pieces{"x", " ", "\xc0", "\xaf", " y"});      // overlong '/'
  CHECK(split("\xed\xa0\x80z") == Pieces{"\xed", "\xa0", "\x80", "z"});      // surrogate U+D800
  CHECK(split("end\xe4\xb8") == Pieces{"end", "\xe4", "\xb8"});              // truncated 中
  CHECK(split("\xf4\x90\x80\x80") == Pieces{"\xf4", "\x90", "\x80", "\x80"});  // above U+10FFFF
  CHECK(split("\xe4\xb8\xad\xe6\x96\x87") == Pieces{"\xe4\xb8\xad\xe6\x96\x87"});  // valid 中文
  CHECK(split("\xf0\x9f\x9a\x80!") == Pieces{"\xf0\x9f\x9a\x80!"});          // valid 🚀!

  const Tokenizer& tok = fortunes();
  const Ids ids = tok.encode("a\xff" "b");
  CHECK(ids == Ids{'a', 0xff, 'b'});
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int round = 0; round < 200; ++round) {
    std::string text;
    for (int i = 0; i < round; ++i) text += static_cast<char>(byte(gen));
    std::string joined;
    for (const std::string_view piece : pre.split(text)) joined += piece;
    CHECK(joined == text);
    CHECK(tok.decode(tok.encode(text)) == text);
    CHECK(tok.decode(tok.encode_with_special(text)) == text);
  }
}

TEST_CASE("splitting is reentrant and one tokenizer serves several threads") {
  const moonlight::Pretokenizer pre;
  std::vector<std::string> outer;
  std::vector<std::string> inner;
  pre.for_each_piece("Hello big world", [&](std::string_view piece) {
    outer.emplace_back(piece);
    for (const std::string_view p : pre.split("x yz")) inner.emplace_back(p);
  });
  CHECK(outer == std::vector<std::string>{"Hello", " big", " world"});
  CHECK(inner.size() == 6);

  const Tokenizer& tok = fortunes();
  std::vector<std::pair<std::string, Ids>> cases;
  for (const auto& c : fixture()["cases"]) cases.emplace_back(case_text(c), c["ids"].get<Ids>());
  std::vector<int> mismatches(2, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (const auto& [text, ids] : cases) mismatches[static_cast<std::size_t>(t)] += tok.encode(text) != ids;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  CHECK(mismatches == std::vector<int>{0, 0});
}

TEST_CASE("very long inputs encode whole and round-trip") {
  const Tokenizer& tok = fortunes();
  for (const std::string& text : {std::string(300000, 'A'), std::string(300000, ' ') + "x",
                                  std::string(200000, 'q') + std::string(100000, '\n'),
                                  std::string(100000, '!')}) {
    const Ids ids = tok.encode(text);
    CHECK(tok.decode(ids) == text);
    CHECK(ids.size() < text.size());  // merges did happen
  }
}

TEST_CASE("decode and token_bytes reject ids outside the vocabulary or unassigned") {
  const Tokenizer& tok = fortunes();
  check_error<muon::InvalidArgument>([&] { (void)tok.decode(Ids{1, 8448}); }, {"8448", "[0, 8448)"});
  check_error<muon::InvalidArgument>([&] { (void)tok.token_bytes(-1); }, {"-1"});
  CHECK(tok.token_bytes(8447) == "[UNK]");

  // Special ids with a gap: the gap decodes to an error, not to empty bytes.
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  const Tokenizer gapped(tokens, {{{"<s>", 256}, {"</s>", 260}}, "<s>", "</s>"}, "gapped");
  CHECK(gapped.vocab_size() == 261);
  CHECK(gapped.eos_id() == 260);
  CHECK(gapped.decode(Ids{256, 'h', 'i', 260}) == "<s>hi</s>");
  check_error<muon::InvalidArgument>([&] { (void)gapped.token_bytes(258); }, {"258", "not assigned"});
}

TEST_CASE("rank file errors name the file and the line") {
  TempDir dir;
  const std::string bytes = byte_lines();
  const auto load = [&](std::string_view name, const std::string& text) {
    write_text(dir / name, text);
    return [path = dir / name] { (void)Tokenizer::load(path); };
  };
  check_error<muon::FileError>([&] { (void)Tokenizer::load(dir / "missing.tiktoken"); },
                               {"missing.tiktoken", "cannot open"});
  check_error<muon::FileError>(load("noline.tiktoken", bytes + "YWI= 256 extra\n"),
                               {"noline.tiktoken", "line 257", "<base64 token> <rank>"});
  check_error<muon::FileError>(load("b64.tiktoken", bytes + "Y*I= 256\n"), {"b64.tiktoken", "line 257", "base64"});
  check_error<muon::FileError>(load("rank.tiktoken", bytes + "YWI= 25x\n"), {"line 257", "rank '25x'"});
  check_error<muon::FileError>(load("neg.tiktoken", bytes + "YWI= -3\n"), {"line 257", "rank '-3'"});
  check_error<muon::FileError>(load("duprank.tiktoken", bytes + "YWI= 7\n"),
                               {"duprank.tiktoken", "line 257", "rank 7", "line 8"});
  check_error<muon::FileError>(load("duptok.tiktoken", bytes + "YWI= 256\nYWI= 257\n"),
                               {"duptok.tiktoken", "line 258", "'YWI='", "line 257"});
  check_error<muon::FileError>(load("gap.tiktoken", bytes + "YWI= 257\n"), {"gap.tiktoken", "no token of rank 256"});
  check_error<muon::FileError>(load("empty.tiktoken", "\n\n"), {"empty.tiktoken", "empty"});
  // A rank no valid file of this size can hold is refused before the tables grow to it (it
  // allocated about 15 GB).
  check_error<muon::FileError>(load("huge.tiktoken", "QQ== 2000000000"),
                               {"huge.tiktoken", "line 1", "rank 2000000000 cannot occur in a file of 15 bytes"});
  // Rank 65 holding "AB" instead of "A": the byte 'A' has no token, so some texts cannot be encoded.
  std::string no_a = bytes;
  no_a.replace(no_a.find("QQ== 65\n"), 7, "QUI= 65");
  check_error<muon::InvalidArgument>(load("nobyte.tiktoken", no_a), {"nobyte.tiktoken", "single byte 65"});

  // Empty lines and CRLF are accepted, as tiktoken's load_tiktoken_bpe accepts them.
  std::string crlf = bytes;
  for (std::size_t at = crlf.find('\n'); at != std::string::npos; at = crlf.find('\n', at + 2)) crlf.insert(at, "\r");
  write_text(dir / "crlf.tiktoken", "\n" + crlf + "\nYWI= 256\r\n\n");
  const Tokenizer crlf_tok = Tokenizer::load(dir / "crlf.tiktoken");
  CHECK(crlf_tok.num_ranks() == 257);
  CHECK(crlf_tok.encode("ab") == Ids{256});
}

TEST_CASE("special-token tables that clash are rejected") {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  const auto make = [&](moonlight::SpecialTokens specials) {
    return [&tokens, specials] { (void)Tokenizer(tokens, specials, "table"); };
  };
  check_error<muon::InvalidArgument>(make({{{"<x>", 255}}, "", ""}), {"table", "'<x>'", "ordinary rank"});
  check_error<muon::InvalidArgument>(make({{{"<x>", 256}, {"<y>", 256}}, "", ""}), {"share id 256"});
  check_error<muon::InvalidArgument>(make({{{"<x>", 256}, {"<x>", 257}}, "", ""}), {"'<x>' is given twice"});
  check_error<muon::InvalidArgument>(make({{{"<x>", 256}}, "<bos>", ""}), {"BOS token '<bos>'"});
  std::vector<std::string> duplicate = tokens;
  duplicate.emplace_back("a");
  check_error<muon::InvalidArgument>([&] { (void)Tokenizer(duplicate, {}, "dup"); }, {"dup", "ranks 97 and 256"});
}

TEST_CASE("load_dir reads tiktoken.model and tokenizer_config.json like Moonlight's tokenizer") {
  TempDir dir;
  fs::copy_file(fortunes_rank_file, dir / "tiktoken.model");
  // Without tokenizer_config.json: Moonlight's default table after the last rank.
  const Tokenizer plain = Tokenizer::load_dir(dir.path());
  CHECK(plain.vocab_size() == 8448);
  CHECK(plain.special_id("<|im_system|>") == 8202);
  CHECK(plain.eos_id() == 8194);

  // The shape of Moonlight's file: named ids in added_tokens_decoder, the rest reserved.
  write_text(dir / "tokenizer_config.json", R"({
    "added_tokens_decoder": {
      "8192": {"content": "[BOS]", "special": true},
      "8193": {"content": "[EOS]", "special": true},
      "8194": {"content": "<|im_end|>", "special": true},
      "8200": {"content": "<|my_tool|>", "special": true}
    },
    "bos_token": {"content": "[BOS]", "lstrip": false},
    "eos_token": "[EOS]",
    "chat_template": "ignored"
  })");
  const Tokenizer configured = Tokenizer::load_dir(dir.path());
  CHECK(configured.vocab_size() == 8448);
  CHECK(configured.special_id("<|my_tool|>") == 8200);
  CHECK(configured.special_id("<|reserved_token_8201|>") == 8201);
  CHECK_FALSE(configured.special_id("<|im_system|>").has_value());
  CHECK(configured.bos_id() == 8192);
  CHECK(configured.eos_id() == 8193);
  CHECK(configured.encode_with_special("<|my_tool|>x") == Ids{8200, 'x'});

  write_text(dir / "tokenizer_config.json", R"({"added_tokens_decoder": {"100": {"content": "[BOS]"}}})");
  check_error<muon::FileError>([&] { (void)Tokenizer::load_dir(dir.path()); },
                               {"tokenizer_config.json", "'100'", ">= 8192"});
  write_text(dir / "tokenizer_config.json", R"({"added_tokens_decoder": {"8192": {"special": true}}})");
  check_error<muon::FileError>([&] { (void)Tokenizer::load_dir(dir.path()); }, {"'8192'", "'content'"});
  // An id far beyond the ranks is refused before the reserved table grows to it (2^31 - 1 took
  // gigabytes and overflowed an int); the last id still taken is 65535 beyond the ranks.
  write_text(dir / "tokenizer_config.json", R"({"added_tokens_decoder": {"2147483647": {"content": "x"}}})");
  check_error<muon::FileError>([&] { (void)Tokenizer::load_dir(dir.path()); },
                               {"'2147483647'", "more than 65536 ids beyond the 8192 ranks"});
  // Keys beyond int32, negative, signed or padded are refused by name before anything is allocated.
  for (const char* key : {"4294967296", "99999999999999999999", "-1", "+8192", " 8192", "8192.0", ""}) {
    write_text(dir / "tokenizer_config.json",
               std::string(R"({"added_tokens_decoder": {")") + key + R"(": {"content": "x"}}})");
    check_error<muon::FileError>([&] { (void)Tokenizer::load_dir(dir.path()); },
                                 {"tokenizer_config.json", "'added_tokens_decoder' key '" + std::string(key) + "'"});
  }
  write_text(dir / "tokenizer_config.json", R"({"added_tokens_decoder": {"73727": {"content": "<|far|>"}}})");
  CHECK(Tokenizer::load_dir(dir.path()).encode_with_special("<|far|>") == Ids{73727});
  write_text(dir / "tokenizer_config.json", R"({"eos_token": 5})");
  check_error<muon::FileError>([&] { (void)Tokenizer::load_dir(dir.path()); }, {"'eos_token'"});
  write_text(dir / "tokenizer_config.json", "{not json");
  check_error<muon::FileError>([&] { (void)Tokenizer::load_dir(dir.path()); }, {"tokenizer_config.json", "JSON"});
  fs::remove(dir / "tiktoken.model");
  check_error<muon::FileError>([&] { (void)Tokenizer::load_dir(dir.path()); }, {"tiktoken.model"});
}

TEST_CASE("base64 round-trips and rejects non-canonical text") {
  for (const std::string& s : std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x80", 3)}) {
    CHECK(moonlight::base64_decode(moonlight::base64_encode(s)) == s);
  }
  CHECK(moonlight::base64_encode("ab") == "YWI=");
  CHECK_FALSE(moonlight::base64_decode("YWJ=").has_value());  // non-zero unused bits
  CHECK_FALSE(moonlight::base64_decode("YWI").has_value());
  CHECK_FALSE(moonlight::base64_decode("Y=I=").has_value());
}

TEST_CASE("train_bpe: a worked example, merge by merge") {
  // One piece "aaabdaaabac". Counts: aa 4, then (a,b) 2 ties (aa,a) 2 and wins as the smaller
  // pair (97,98) < (256,97); then (aa,ab) 2; then four pairs of count 1, of which (a,c) =
  // (97,99) is the smallest.
  const std::string_view corpus[] = {"aaabdaaabac"};
  const std::vector<std::string> tokens = moonlight::train_bpe(corpus, 260);
  REQUIRE(tokens.size() == 260);
  for (int b = 0; b < 256; ++b) CHECK(tokens[static_cast<std::size_t>(b)] == std::string(1, static_cast<char>(b)));
  CHECK(tokens[256] == "aa");
  CHECK(tokens[257] == "ab");
  CHECK(tokens[258] == "aaab");
  CHECK(tokens[259] == "ac");
  // Training stops when no pair is left: "ab" alone gives one merge.
  const std::string_view tiny[] = {"ab"};
  CHECK(moonlight::train_bpe(tiny, 1000).size() == 257);
  check_error<muon::InvalidArgument>([&] { (void)moonlight::train_bpe(tiny, 100); }, {"vocab_size is 100"});
}

TEST_CASE("train_bpe reproduces the committed sample rank file bit for bit") {
  // bpe_sample_1024.tiktoken was made by `moonlight_bpe --corpus bpe_sample.txt --vocab-size 1024`
  // (README next to fortunes.tiktoken); the full fortunes.tiktoken is made the same way.
  const std::string sample = read_bytes(fixture_dir / "bpe_sample.txt");
  const std::string_view documents[] = {sample};
  const std::vector<std::string> tokens = moonlight::train_bpe(documents, 1024);
  REQUIRE(tokens.size() == 1024);
  TempDir dir;
  moonlight::write_rank_file(dir / "retrained.tiktoken", tokens);
  CHECK(read_bytes(dir / "retrained.tiktoken") == read_bytes(fixture_dir / "bpe_sample_1024.tiktoken"));
  // Every merge joins two earlier tokens, and the file is a valid tokenizer.
  std::unordered_map<std::string, std::size_t> rank_of;
  for (std::size_t r = 0; r < tokens.size(); ++r) rank_of.emplace(tokens[r], r);
  for (std::size_t r = 256; r < tokens.size(); ++r) {
    bool split_found = false;
    for (std::size_t cut = 1; cut < tokens[r].size() && !split_found; ++cut) {
      const auto left = rank_of.find(tokens[r].substr(0, cut));
      const auto right = rank_of.find(tokens[r].substr(cut));
      split_found = left != rank_of.end() && right != rank_of.end() && left->second < r && right->second < r;
    }
    CHECK_MESSAGE(split_found, "rank " << r);
  }
  const Tokenizer tok = Tokenizer::load(dir / "retrained.tiktoken");
  CHECK(tok.decode(tok.encode(sample)) == sample);
  CHECK(tok.encode(sample).size() < sample.size() / 2);
}

TEST_CASE("write_rank_file replaces the target and names it when it cannot") {
  TempDir dir;
  const std::vector<std::string> tokens = {"x", "yz"};
  write_text(dir / "r.tiktoken", "old contents");
  moonlight::write_rank_file(dir / "r.tiktoken", tokens);
  CHECK(read_bytes(dir / "r.tiktoken") == "eA== 0\neXo= 1\n");
  check_error<muon::FileError>([&] { moonlight::write_rank_file(dir / "no" / "such" / "r.tiktoken", tokens); },
                               {"no/such/r.tiktoken", "creating"});
  CHECK(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator{}) == 1);
}
