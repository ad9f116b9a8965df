// moonlight_bpe: trains a byte-level BPE rank file (tiktoken format) on text files.
//
//   moonlight_bpe --corpus a.txt b.txt --vocab-size 8192 --out vocab.tiktoken
//
// Each file is read as raw bytes and pre-tokenised on its own with Moonlight's regex; see
// moonlight/bpe_trainer.hpp for the algorithm. The output is written atomically.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include <moonlight/bpe_trainer.hpp>
#include <moonlight/tiktoken_file.hpp>

int main(int argc, char** argv) {
  CLI::App app{"Train a byte-level BPE rank file (tiktoken format) with Moonlight's pre-tokenisation"};
  std::vector<std::filesystem::path> corpus;
  std::int32_t vocab_size = 0;
  std::filesystem::path out;
  app.add_option("--corpus", corpus, "UTF-8 text files to train on")->required()->check(CLI::ExistingFile);
  app.add_option("--vocab-size", vocab_size, "number of ranks, the 256 single bytes included")
      ->required()
      ->check(CLI::Range(256, 1 << 30));
  app.add_option("--out", out, "rank file to write")->required();
  CLI11_PARSE(app, argc, argv);

  try {
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::string> texts;
    std::size_t total = 0;
    for (const auto& path : corpus) {
      std::ifstream in(path, std::ios::binary);
      if (!in) throw muon::FileError("cannot open corpus file '" + path.string() + "'");
      texts.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      if (in.bad()) throw muon::FileError("error reading corpus file '" + path.string() + "'");
      total += texts.back().size();
    }
    const std::vector<std::string_view> documents(texts.begin(), texts.end());
    const std::vector<std::string> tokens = moonlight::train_bpe(documents, vocab_size);
    moonlight::write_rank_file(out, tokens);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%zu files, %zu bytes: wrote %zu ranks to %s in %.1f s\n", corpus.size(), total, tokens.size(),
                out.string().c_str(), seconds);
    if (static_cast<std::int32_t>(tokens.size()) < vocab_size) {
      std::printf("note: the corpus ran out of pairs before %d ranks\n", vocab_size);
    }
  } catch (const muon::Error& e) {
    std::fprintf(stderr, "moonlight_bpe: %s\n", e.what());
    return 1;
  }
  return 0;
}
