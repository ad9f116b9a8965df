// Must not compile: `Settings` gained a member that its field table does not list. The test
// passes when the compiler prints the sentence of check_complete's static_assert, which is how a
// field added later without a table entry fails the build (muon/schema.hpp).
#include <muon/schema.hpp>
#include <tuple>

struct Settings {
  int steps = 5;
  double ratio = 0.5;  // added without a table entry
};
template <>
struct muon::Schema<Settings> {
  static constexpr auto fields = std::tuple{field("steps", &Settings::steps)};
};

int main() {
  muon::validate_fields(Settings{}, "Settings");
  return 0;
}
