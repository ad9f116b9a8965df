// The training forward/backward pass (moonlight/backward.hpp): whole-model gradients against
// PyTorch autograd on transformers' DeepseekV3ForCausalLM (fixtures written by
// tests/reference/make_moonlight_grad_fixtures.py), and finite differences in fp64.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "fixtures.hpp"
#include "moonlight/backward.hpp"
#include "moonlight/model.hpp"
#include "muon/io/safetensors.hpp"

namespace st = muon::safetensors;
using moonlight::Model;
using moonlight::test::fixture;

namespace {

struct Batch {
  std::vector<std::int32_t> inputs, targets;
};

Batch fixture_batch(const st::File& ref) {
  const std::vector<std::int32_t> ids = moonlight::test::read_ids(ref, "ids");
  return {{ids.begin(), ids.end() - 1}, {ids.begin() + 1, ids.end()}};
}

}  // namespace

TEST_CASE("loss and every gradient match PyTorch autograd on transformers' model") {
  for (const char* name : {"tiny_moonlight", "tiny_qlora_groups"}) {
    CAPTURE(name);
    const Model model = Model::load(fixture(name));
    const st::File ref = st::File::open(fixture(name) / "gradients.safetensors");
    const Batch batch = fixture_batch(ref);
    std::vector<float> grads(model.weights().data().size(), 0.0f);
    const float loss = moonlight::loss_and_gradients(model, batch.inputs, batch.targets, grads);
    // fp32 sums in a different order than torch's: 1e-5 relative on a loss of ~6.
    CHECK(loss == doctest::Approx(ref.to_float("loss")[0]).epsilon(1e-5));

    std::size_t compared = 0;
    for (const moonlight::TensorSpec& t : model.weights().tensors()) {
      CAPTURE(t.name);
      const float* g = grads.data() + t.offset;
      const auto n = static_cast<std::size_t>(muon::numel(t.shape));
      if (t.name.ends_with("e_score_correction_bias")) {
        // A buffer in transformers; moved by the balancing rule, never by gradients.
        CHECK(std::all_of(g, g + n, [](float v) { return v == 0.0f; }));
        continue;
      }
      const std::vector<float> expected = ref.to_float("grad/" + t.name);
      REQUIRE(expected.size() == n);
      double err = 0.0, scale = 0.0;
      for (std::size_t i = 0; i < n; ++i) {
        err = std::max(err, std::abs(double{g[i]} - double{expected[i]}));
        scale = std::max(scale, std::abs(double{expected[i]}));
      }
      // Max error relative to the tensor's largest gradient. Measured ≤ 3.2e-6 over all tensors of
      // both models (fp32 round-off in a different summation order than torch's, through 3–4
      // layers and the 1e-3-scaled latent norms of tiny_qlora_groups); a wrong or missing term in
      // any layer's backward is O(1e-2) or more.
      CHECK(err <= 2e-5 * scale);
      ++compared;
    }
    CHECK(compared == ref.names().size() - 2);  // every parameter gradient but ids and loss
  }
}
