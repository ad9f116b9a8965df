// One Muon step and one AdamW step through the installed (or added) library.
#include <muon/backends/eigen.hpp>
#include <muon/muon.hpp>
#include <vector>

int main() {
  std::vector<float> w(12, 0.5f), dw(12, 0.1f), b(3, 0.0f), db(3, 0.1f);
  w[0] = 1.0f;
  muon::Optimizer<muon::EigenBackend> opt({{"w", muon::Role::matrix, {w.data(), {3, 4}}, {dw.data(), {3, 4}}},
                                           {"b", muon::Role::bias, {b.data(), {3}}, {db.data(), {3}}}});
  const auto report = opt.step();
  return report.step == 1 && w[1] != 0.5f && b[0] != 0.0f ? 0 : 1;
}
