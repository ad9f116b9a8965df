// Must not compile: `Almost` lacks most of the backend operations. The test passes when the
// compiler prints the sentence of Optimizer's static_assert.
#include <muon/muon.hpp>

struct Almost {
  struct Buffer {
    std::span<float> span() { return {}; }
  };
  Buffer allocate(std::int64_t) { return {}; }
};

int main() {
  muon::Optimizer<Almost> opt({});
  return 0;
}
