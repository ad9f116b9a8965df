// Fuzzes moonlight/tokenizer.hpp's tokenizer_config.json reading: Tokenizer::load_dir of a
// directory holding a fixed rank file (the 256 single bytes) and the input as the config.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "moonlight/tiktoken_file.hpp"
#include "moonlight/tokenizer.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.emplace_back(1, static_cast<char>(b));
  moonlight::write_rank_file(muon::fuzz::scratch_dir() / "tiktoken.model", bytes);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)muon::fuzz::write_input("tokenizer_config.json", data, size);
  muon::fuzz::expect_muon_errors([&] {
    const moonlight::Tokenizer tok = moonlight::Tokenizer::load_dir(muon::fuzz::scratch_dir());
    // Ids beyond the ranks are bounded (kMaxSpecialTokens): the table cannot exceed 256 + 65,536.
    if (tok.vocab_size() > 256 + (1 << 16)) __builtin_trap();
    const std::string text = "[BOS]hi<|im_end|>";
    const std::vector<std::int32_t> ids = tok.encode_with_special(text);
    if (tok.decode(ids) != text) __builtin_trap();
  });
  return 0;
}
