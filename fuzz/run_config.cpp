// Fuzzes moonlight/train_options.hpp: a run config file read, checked and turned into Options.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "moonlight/train_options.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = muon::fuzz::write_input("run.json", data, size);
  muon::fuzz::expect_muon_errors([&] {
    const moonlight::RunConfig run = moonlight::run_config_from_json(moonlight::read_run_config(path), path.string());
    (void)moonlight::optimizer_options(run);
    (void)moonlight::to_json(run).dump();
  });
  return 0;
}
