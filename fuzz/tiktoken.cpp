// Fuzzes moonlight/tiktoken_file.hpp: read_rank_file on any bytes.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "moonlight/tiktoken_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = muon::fuzz::write_input("tiktoken.model", data, size);
  muon::fuzz::expect_muon_errors([&] {
    const std::vector<std::string> tokens = moonlight::read_rank_file(path);
    // Ranks are bounded by the file's size (one line of at least 6 bytes each).
    if (tokens.size() > size / 6 + 1) __builtin_trap();
  });
  return 0;
}
