// Fuzzes muon/state_file.hpp: load_state of any bytes into an optimizer over a small fixed
// table (a Muon matrix "w" [4, 3] and an AdamW gain "g" [3]).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_support.hpp"
#include "muon/backends/eigen.hpp"
#include "muon/muon.hpp"
#include "muon/state_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static std::vector<float> w(12, 0.5f), dw(12, 0.25f), g(3, 1.0f), dg(3, 0.125f);
  const auto path = muon::fuzz::write_input("state.safetensors", data, size);
  std::vector<muon::Parameter> table{{"w", muon::Role::matrix, {w.data(), {4, 3}}, {dw.data(), {4, 3}}},
                                     {"g", muon::Role::norm, {g.data(), {3}}, {dg.data(), {3}}}};
  muon::Optimizer<muon::EigenBackend> opt(std::move(table));
  muon::fuzz::expect_muon_errors([&] { muon::load_state(opt, path); });
  return 0;
}
