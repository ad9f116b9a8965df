// Fuzzes moonlight/config.hpp: Config::load of a config.json, then the tensor layout it implies.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "moonlight/config.hpp"
#include "moonlight/weights.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = muon::fuzz::write_input("config.json", data, size);
  muon::fuzz::expect_muon_errors([&] {
    const moonlight::Config c = moonlight::Config::load(path);
    // Config's bounds promise that every tensor's element count fits int64. The layout is built
    // only for small models: its length grows with layers × experts (bounded, but slow to fuzz).
    if (c.num_hidden_layers * (c.n_routed_experts + 16) <= 4096) {
      for (const moonlight::TensorSpec& t : moonlight::tensor_layout(c))
        if (!muon::checked_numel(t.shape)) __builtin_trap();
    }
  });
  return 0;
}
