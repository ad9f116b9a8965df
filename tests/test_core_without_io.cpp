// The core reads and writes no files: <muon/muon.hpp> must not pull in a JSON library or mmap
// (the state file is the opt-in <muon/state_file.hpp>). This file is built against muon::core
// alone and fails to compile if it does.
#include <doctest/doctest.h>

#include <muon/muon.hpp>

#include "toy_backend.hpp"

#ifdef NLOHMANN_JSON_VERSION_MAJOR
#error "<muon/muon.hpp> includes nlohmann/json: keep JSON in the opt-in headers (options_json.hpp, state_file.hpp)"
#endif
#if defined(PROT_READ) || defined(MAP_SHARED)
#error "<muon/muon.hpp> includes <sys/mman.h>: keep files in the opt-in headers (io/, state_file.hpp)"
#endif

TEST_CASE("the core steps and exports its state without any file layer") {
  std::vector<float> w(8 * 12, 0.5f), g(w.size(), 0.25f);
  muon::Optimizer<muon::test::ToyBackend> opt({{"w", muon::Role::matrix, {w.data(), {8, 12}}, {g.data(), {8, 12}}}},
                                              {.lr = 0.01});
  (void)opt.step();
  const muon::SavedState state = opt.export_state();
  CHECK(state.step == 1);
  REQUIRE(state.tensors.size() == 1);
  CHECK(state.tensors[0].name == "w/momentum");
}
