// Training data (moonlight/corpus.hpp): text and shards into one stream, packing, the validation
// split, the data order, and a clear error for every bad corpus.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "moonlight/corpus.hpp"
#include "moonlight/tokenizer.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using moonlight::CorpusError;

namespace {

const moonlight::Tokenizer& fortunes_tokenizer() {
  static const moonlight::Tokenizer t =
      moonlight::Tokenizer::load(fs::path(MOONLIGHT_TOKENIZER_DIR) / "fortunes.tiktoken");
  return t;
}

fs::path write(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

std::string message_of(auto&& f) {
  try {
    f();
  } catch (const CorpusError& e) {
    return e.what();
  }
  return "no CorpusError";
}

moonlight::TokenStream numbered_stream(std::int32_t n) {
  moonlight::TokenStream s;
  for (std::int32_t i = 0; i < n; ++i) s.tokens.push_back(i);
  s.source = "numbers";
  return s;
}

}  // namespace

TEST_CASE("text becomes documents joined by eos, and the separator splits fortune files") {
  muon::test::TempDir dir("corpus_text");
  const auto& tok = fortunes_tokenizer();
  const fs::path file = write(dir.path() / "f.txt", "A fool and his money.\n%\nTo be or not.\n%\n");
  const std::vector<fs::path> files{file};

  const moonlight::TokenStream whole = moonlight::read_corpus(files, tok);
  CHECK(whole.documents == 1);
  const moonlight::TokenStream split = moonlight::read_corpus(files, tok, {.document_separator = "%"});
  CHECK(split.documents == 2);
  std::vector<std::int32_t> expected = tok.encode("A fool and his money.\n");
  expected.push_back(*tok.eos_id());
  const std::vector<std::int32_t> second = tok.encode("To be or not.\n");
  expected.insert(expected.end(), second.begin(), second.end());
  expected.push_back(*tok.eos_id());
  CHECK(split.tokens == expected);
  CHECK(split.text_bytes == 40);
}

TEST_CASE("a directory stands for its files in name order, and a shard round-trips") {
  muon::test::TempDir dir("corpus_dir");
  const auto& tok = fortunes_tokenizer();
  fs::create_directories(dir.path() / "d");
  write(dir.path() / "d" / "b.txt", "second");
  write(dir.path() / "d" / "a.txt", "first");
  write(dir.path() / "d" / ".hidden", "\xff not read");
  const std::vector<fs::path> files = moonlight::expand_corpus_paths(std::vector<fs::path>{dir.path() / "d"});
  REQUIRE(files.size() == 2);
  CHECK(files[0].filename() == "a.txt");
  const moonlight::TokenStream text = moonlight::read_corpus(files, tok);

  moonlight::write_shard(dir.path() / "c.bin", text.tokens);
  const moonlight::TokenStream shard = moonlight::read_corpus(std::vector<fs::path>{dir.path() / "c.bin"}, tok);
  CHECK(shard.tokens == text.tokens);
  CHECK(fs::file_size(dir.path() / "c.bin") == 16 + 4 * text.tokens.size());
}

TEST_CASE("every bad corpus is a CorpusError naming the file and what to do") {
  muon::test::TempDir dir("corpus_bad");
  const auto& tok = fortunes_tokenizer();
  const auto read = [&](const fs::path& p) { (void)moonlight::read_corpus(moonlight::expand_corpus_paths(std::vector{p}), tok); };

  CHECK(message_of([&] { read(dir.path() / "missing.txt"); }).find("missing.txt' does not exist") != std::string::npos);
  CHECK(message_of([&] { (void)moonlight::expand_corpus_paths({}); }).find("no corpus given") != std::string::npos);
  fs::create_directories(dir.path() / "empty_dir");
  CHECK(message_of([&] { read(dir.path() / "empty_dir"); }).find("holds no files") != std::string::npos);
  const fs::path empty = write(dir.path() / "empty.txt", "");
  CHECK(message_of([&] { read(empty); }).find("is empty") != std::string::npos);
  const fs::path blank = write(dir.path() / "blank.txt", "\n%\n  \n");
  CHECK(message_of([&] {
          (void)moonlight::read_corpus(std::vector{blank}, tok, {.document_separator = "%"});
        }).find("is empty") != std::string::npos);
  const fs::path binary = write(dir.path() / "fortunes.dat", std::string("\x02\x00\x00\x00\xff\xfe", 6));
  const std::string not_text = message_of([&] { read(binary); });
  CHECK(not_text.find("fortunes.dat' is not UTF-8 text (byte 4)") != std::string::npos);

  moonlight::write_shard(dir.path() / "ok.bin", std::vector<std::int32_t>{1, 2, 3});
  std::string bytes;
  {
    std::ifstream in(dir.path() / "ok.bin", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const fs::path truncated = write(dir.path() / "truncated.bin", bytes.substr(0, bytes.size() - 2));
  CHECK(message_of([&] { read(truncated); }).find("truncated or corrupt") != std::string::npos);
  const fs::path not_shard = write(dir.path() / "text.bin", "hello world, not a shard");
  CHECK(message_of([&] { read(not_shard); }).find("does not start with \"MOONTOK1\"") != std::string::npos);
  moonlight::write_shard(dir.path() / "big_id.bin", std::vector<std::int32_t>{1, 9000});
  CHECK(message_of([&] { read(dir.path() / "big_id.bin"); }).find("token id 9000 at position 1") != std::string::npos);

  CHECK(message_of([&] { moonlight::PackedSequences(numbered_stream(8), 8, 0.0); })
            .find("has 8 tokens, shorter than one sequence (9 tokens)") != std::string::npos);
}

TEST_CASE("UTF-8 validation rejects overlong forms, surrogates and truncation") {
  CHECK_FALSE(moonlight::first_invalid_utf8("plain, \xe4\xb8\xad\xe6\x96\x87, \xf0\x9f\x98\x80").has_value());
  CHECK(moonlight::first_invalid_utf8("ab\xc0\xaf") == 2u);          // overlong '/'
  CHECK(moonlight::first_invalid_utf8("\xed\xa0\x80") == 0u);        // a UTF-16 surrogate
  CHECK(moonlight::first_invalid_utf8("ok\xe4\xb8") == 2u);          // cut in the middle
  CHECK(moonlight::first_invalid_utf8("\xf4\x90\x80\x80") == 0u);    // above U+10FFFF
}

TEST_CASE("packing: sequences share one token, every k-th is held out, the order is a per-epoch shuffle") {
  const moonlight::PackedSequences data(numbered_stream(101), 10, 0.25);
  // (101 − 1) / 10 = 10 sequences; k = 4: sequences 3 and 7 are held out.
  CHECK(data.train_count() == 8);
  CHECK(data.val_count() == 2);
  CHECK(data.val(0)[0] == 30);
  CHECK(data.val(1)[0] == 70);
  CHECK(data.train(3)[0] == 40);  // train: 0 1 2 4 5 6 8 9
  CHECK(data.train(0).size() == 11);
  CHECK(data.train(0)[10] == data.train(1)[0]);

  moonlight::SequenceOrder order(8, 7), again(8, 7), other(8, 8);
  std::set<std::int64_t> epoch0, epoch1;
  std::vector<std::int64_t> first;
  for (std::int64_t k = 0; k < 8; ++k) epoch0.insert(order.at(k));
  for (std::int64_t k = 8; k < 16; ++k) epoch1.insert(order.at(k));
  CHECK(epoch0.size() == 8);  // each epoch visits every sequence once
  CHECK(epoch1.size() == 8);
  // A fresh order jumping straight to k (a resumed run) agrees with one that walked there.
  for (std::int64_t k : {13, 2, 9}) CHECK(again.at(k) == moonlight::SequenceOrder(8, 7).at(k));
  bool differs = false;
  for (std::int64_t k = 0; k < 8; ++k) {
    first.push_back(moonlight::SequenceOrder(8, 7).at(k));
    differs = differs || other.at(k) != first.back();
  }
  CHECK(differs);  // another seed, another order
}
