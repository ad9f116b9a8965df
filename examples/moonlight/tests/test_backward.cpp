// The training forward/backward pass (moonlight/backward.hpp): whole-model gradients against
// PyTorch autograd on transformers' DeepseekV3ForCausalLM (fixtures written by
// tests/reference/make_moonlight_grad_fixtures.py), and finite differences in fp64.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
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

namespace {

// Central differences of the fp64 loss at the largest-gradient entry of every tensor against the
// fp64 backward. The step is 1e-5 of the largest |weight| in the entry's row (the latent rows of
// tiny_qlora_groups' projections are ~1e-4 in size, so a fixed step would leave the linear regime): truncation
// error ~h²·|f'''| and round-off ~1e-16·|loss|/h stay below 1e-7 of the gradient (measured: at
// most 1.4e-8 of the tensor's largest gradient), inside the 2e-7 tolerance; a wrong term shows at
// 1e-3 or more. The loss is only
// piecewise smooth (top-k routing); at these step sizes no selection flips on the fixture batch
// (a flip would show as a huge error, not a small one).
void check_finite_differences(const moonlight::Config& c, const moonlight::Weights& layout, std::vector<double> values,
                              const Batch& batch, const moonlight::AuxLoss& aux = {}) {
  const std::size_t size = values.size();
  std::vector<double> grads(size, 0.0), scratch(size);
  const auto loss = [&](const std::vector<double>& v) {
    std::fill(scratch.begin(), scratch.end(), 0.0);
    return moonlight::loss_and_gradients<double>(c, layout, v, batch.inputs, batch.targets, scratch, nullptr, aux);
  };
  moonlight::loss_and_gradients<double>(c, layout, values, batch.inputs, batch.targets, grads, nullptr, aux);
  std::size_t routed_checked = 0;
  for (const moonlight::TensorSpec& t : layout.tensors()) {
    if (t.name.ends_with("e_score_correction_bias")) continue;  // no gradient by design
    CAPTURE(t.name);
    const auto n = static_cast<std::size_t>(muon::numel(t.shape));
    const double* g = grads.data() + t.offset;
    const auto by_size = [](double a, double b) { return std::abs(a) < std::abs(b); };
    const auto largest = static_cast<std::size_t>(std::max_element(g, g + n, by_size) - g);
    const double scale = std::abs(g[largest]);
    const std::size_t expert_at = t.name.find(".mlp.experts.");
    const bool routed = expert_at != std::string::npos;
    // Experts share one code path: experts 0–2 of each layer, where this short batch routes tokens
    // to them, are checked; that keeps the number of fp64 passes (the test's cost) down.
    if (routed && (scale == 0.0 || std::stoi(t.name.substr(expert_at + 13)) >= 3)) continue;
    CHECK(scale > 0.0);                     // every other tensor takes part in the loss
    routed_checked += routed ? 1 : 0;
    const auto cols = static_cast<std::size_t>(t.shape.back());
    const double* row = values.data() + t.offset + largest / cols * cols;
    const double h = 1e-5 * std::min(1.0, std::abs(*std::max_element(row, row + cols, by_size)));
    {  // one entry per tensor: two fp64 passes each keep the test at seconds under sanitizers
      const std::size_t i = largest;
      double& w = values[t.offset + i];
      const double saved = w;
      w = saved + h;
      const double up = loss(values);
      w = saved - h;
      const double down = loss(values);
      w = saved;
      const double numeric = (up - down) / (2 * h);
      CHECK(std::abs(numeric - g[i]) <= 2e-7 * scale);
    }
  }
  CHECK(routed_checked >= 3 * 2);  // gate, up and down of at least two experts
}

std::vector<double> widened(std::span<const float> values) { return {values.begin(), values.end()}; }

Batch short_batch(const st::File& ref) {
  Batch b = fixture_batch(ref);
  b.inputs.resize(8);  // enough tokens for every path, few enough to keep the fp64 passes fast
  b.targets.resize(8);
  return b;
}

}  // namespace

TEST_CASE("fp64 gradients of every tensor equal central finite differences") {
  for (const char* name : {"tiny_moonlight", "tiny_qlora_groups"}) {
    CAPTURE(name);
    const Model model = Model::load(fixture(name));
    const Batch batch = short_batch(st::File::open(fixture(name) / "gradients.safetensors"));
    check_finite_differences(model.config(), model.weights(), widened(model.weights().data()), batch);
  }
}

TEST_CASE("finite differences also hold with tied embeddings and unnormalised top-k weights") {
  const Model model = Model::load(fixture("tiny_moonlight"));
  moonlight::Config c = model.config();
  c.tie_word_embeddings = true;  // the embedding's gradient collects the head's
  c.norm_topk_prob = false;
  moonlight::Weights layout(c);
  for (const moonlight::TensorSpec& t : layout.tensors()) {
    const auto from = model.weights().values(t.name);
    std::copy(from.begin(), from.end(), layout.values(t.name).begin());
  }
  const Batch batch = short_batch(st::File::open(fixture("tiny_moonlight") / "gradients.safetensors"));
  check_finite_differences(c, layout, widened(layout.data()), batch);
}

// A copy of the fixture model's weights under a changed config (the layout must not change).
moonlight::Weights copied_weights(const Model& model, const moonlight::Config& c) {
  moonlight::Weights w(c);
  for (const moonlight::TensorSpec& t : w.tensors()) {
    const auto from = model.weights().values(t.name);
    std::copy(from.begin(), from.end(), w.values(t.name).begin());
  }
  return w;
}

TEST_CASE("the sequence-wise balance loss: finite differences, its value, and α = 0 changes nothing") {
  const Model model = Model::load(fixture("tiny_moonlight"));
  const moonlight::Config& c = model.config();
  const st::File ref = st::File::open(fixture("tiny_moonlight") / "gradients.safetensors");
  // α = 0.5, far above Moonlight's 1e-3, so that a wrong aux gradient stands out of the CE one.
  check_finite_differences(c, model.weights(), widened(model.weights().data()), short_batch(ref), {.alpha = 0.5});

  const Batch batch = fixture_batch(ref);
  std::vector<float> plain(model.weights().data().size(), 0.0f), off = plain, on = plain;
  const float base = moonlight::loss_and_gradients(model, batch.inputs, batch.targets, plain);
  double value = -1.0;
  CHECK(moonlight::loss_and_gradients(model, batch.inputs, batch.targets, off, nullptr, {.alpha = 0.0, .value = &value}) == base);
  CHECK(off == plain);
  CHECK(value == 0.0);

  // Σ_i P_i = 1, so each layer's L_Bal lies between its smallest and largest f_i.
  moonlight::ExpertLoad load;
  const float with_aux =
      moonlight::loss_and_gradients(model, batch.inputs, batch.targets, on, &load, {.alpha = 0.5, .value = &value});
  CHECK(with_aux == doctest::Approx(base + value).epsilon(1e-6));
  double low = 0.0, high = 0.0;
  for (const auto& counts : load.tokens) {
    if (counts.empty()) continue;
    const auto T = static_cast<double>(batch.inputs.size());
    const double to_f = static_cast<double>(c.n_routed_experts) / (static_cast<double>(c.num_experts_per_tok) * T);
    low += to_f * static_cast<double>(*std::min_element(counts.begin(), counts.end()));
    high += to_f * static_cast<double>(*std::max_element(counts.begin(), counts.end()));
  }
  CHECK(value / 0.5 >= low);
  CHECK(value / 0.5 <= high);

  // Every expert chosen by every token: f_i = 1, so L_Bal = Σ_i P_i = 1 per MoE layer, exactly.
  moonlight::Config all = c;
  all.num_experts_per_tok = all.n_routed_experts;
  const moonlight::Weights w = copied_weights(model, all);
  std::vector<double> values(w.data().begin(), w.data().end()), grads(values.size(), 0.0);
  (void)moonlight::loss_and_gradients<double>(all, w, values, batch.inputs, batch.targets, grads, nullptr,
                                              {.alpha = 0.25, .value = &value});
  CHECK(value == doctest::Approx(0.25 * 2).epsilon(1e-12));  // two MoE layers
}

TEST_CASE("a pass over stacked sequences equals the sum of one pass per sequence") {
  // Three sequences of the fixture's ids (rotated, so that each routes differently), in fp64 so
  // that only the summation order differs: 1e-12 relative bounds that (measured ~1e-15) and any
  // leak between sequences (a key of another sequence, a position not restarting at 0, the
  // balance loss's counts over the whole pass) moves values by far more.
  const Model model = Model::load(fixture("tiny_moonlight"));
  const moonlight::Config& c = model.config();
  const std::vector<double> values = widened(model.weights().data());
  const std::vector<std::int32_t> ids =
      moonlight::test::read_ids(st::File::open(fixture("tiny_moonlight") / "gradients.safetensors"), "ids");
  const std::size_t T = ids.size() - 1;
  std::vector<std::int32_t> inputs, targets;
  std::vector<double> separate(values.size(), 0.0), stacked(values.size(), 0.0);
  moonlight::ExpertLoad separate_load, stacked_load;
  double separate_objective = 0.0, separate_aux = 0.0, value = 0.0;
  for (std::size_t shift : {0, 5, 11}) {
    std::vector<std::int32_t> s(ids);
    std::rotate(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(shift), s.end());
    inputs.insert(inputs.end(), s.begin(), s.end() - 1);
    targets.insert(targets.end(), s.begin() + 1, s.end());
    separate_objective += moonlight::loss_and_gradients<double>(
        c, model.weights(), values, std::span(s).first(T), std::span(s).subspan(1), separate, &separate_load,
        {.alpha = 0.5, .value = &value});
    separate_aux += value;
  }
  const double stacked_objective = moonlight::loss_and_gradients<double>(
      c, model.weights(), values, inputs, targets, stacked, &stacked_load, {.alpha = 0.5, .value = &value}, nullptr, 3);
  CHECK(stacked_objective == doctest::Approx(separate_objective).epsilon(1e-12));
  CHECK(value == doctest::Approx(separate_aux).epsilon(1e-12));
  CHECK(stacked_load.tokens == separate_load.tokens);
  double err = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    err = std::max(err, std::abs(stacked[i] - separate[i]));
    scale = std::max(scale, std::abs(separate[i]));
  }
  CHECK(err <= 1e-12 * scale);
  CHECK_THROWS_AS(moonlight::loss_and_gradients<double>(c, model.weights(), values, std::span(inputs).first(3 * T - 1),
                                                        std::span(targets).first(3 * T - 1), stacked, nullptr, {}, nullptr, 3),
                  muon::InvalidArgument);
}

// With every o_proj and down_proj (dense, routed and shared experts) zero, attention and MLP add
// exactly 0 to the residual stream, so every layer's hidden state is the embedding row: each MoE
// router sees RMSNorm_post(embedding), and the objective has a closed form that this test computes
// on its own (docs/moonlight-architecture.md §6):
//   s_{t,i} = sigmoid(gate_i · x̂_t), top-K_r of s + bias (n_group = 1), f_i = N_r/(K_r·T)·count_i,
//   P_i = (1/T)·Σ_t s_{t,i}/Z_t with Z_t = Σ_j s_{t,j}, L_Bal = Σ_i f_i·P_i,
//   objective = CE(lm_head(RMSNorm_final(embedding))) + α·Σ_layers L_Bal.
// The cross-entropy reaches a router only through routing weight × expert output, and every expert
// output is 0 here, so the router's gradient is the balance loss's alone (checked: with α = 0 it is
// exactly 0). With f constant (the selection has no gradient),
//   d(α·L_Bal)/dz_{t,i} = α/T · s_{t,i}(1 − s_{t,i}) · (f_i·Z_t − Σ_j f_j·s_{t,j}) / Z_t²,
// and d/dgate_i = Σ_t (that) · x̂_t.
TEST_CASE("with every block's output zeroed, the objective and the router gradient equal the balance loss's formula") {
  const Model model = Model::load(fixture("tiny_moonlight"));
  const moonlight::Config& c = model.config();
  REQUIRE(c.n_group == 1);  // plain top-k over s + bias, reproduced below
  const moonlight::Weights& layout = model.weights();
  std::vector<double> values = widened(layout.data());
  std::size_t zeroed = 0;
  for (const moonlight::TensorSpec& t : layout.tensors()) {
    if (t.name.ends_with("o_proj.weight") || t.name.ends_with("down_proj.weight")) {
      std::fill_n(values.begin() + static_cast<std::ptrdiff_t>(t.offset), muon::numel(t.shape), 0.0);
      ++zeroed;
    }
  }
  // Per layer: o_proj; layer 0's dense down_proj; each MoE layer's 8 experts' and the shared one.
  REQUIRE(zeroed == 3 + 1 + 2 * (8 + 1));
  const auto tensor = [&](const std::string& name) { return values.data() + layout.spec(name).offset; };

  const Batch batch = fixture_batch(st::File::open(fixture("tiny_moonlight") / "gradients.safetensors"));
  const auto T = static_cast<std::int64_t>(batch.inputs.size());
  const std::int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok, V = c.vocab_size;
  const double alpha = 0.5;  // far above Moonlight's 1e-3, so the balance loss weighs in the objective

  std::vector<double> grads(values.size(), 0.0);
  moonlight::ExpertLoad load;
  double value = -1.0;
  const double objective = moonlight::loss_and_gradients<double>(c, layout, values, batch.inputs, batch.targets, grads,
                                                                 &load, {.alpha = alpha, .value = &value});

  // w ⊙ x / sqrt(mean(x²) + eps), of the embedding row of token t.
  const double* embed = tensor("model.embed_tokens.weight");
  const auto normed = [&](const std::string& weight, std::int64_t t) {
    const double* w = tensor(weight);
    const double* x = embed + static_cast<std::int64_t>(batch.inputs[static_cast<std::size_t>(t)]) * D;
    double sum_sq = 0.0;
    for (std::int64_t d = 0; d < D; ++d) sum_sq += x[d] * x[d];
    const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(D) + c.rms_norm_eps);
    std::vector<double> y(static_cast<std::size_t>(D));
    for (std::int64_t d = 0; d < D; ++d) y[d] = w[d] * (x[d] * inv);
    return y;
  };

  double cross_entropy = 0.0;
  const double* head = tensor("lm_head.weight");
  for (std::int64_t t = 0; t < T; ++t) {
    const std::vector<double> x = normed("model.norm.weight", t);
    std::vector<double> logits(static_cast<std::size_t>(V), 0.0);
    for (std::int64_t v = 0; v < V; ++v) {
      for (std::int64_t d = 0; d < D; ++d) logits[v] += head[v * D + d] * x[d];
    }
    const double m = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (const double z : logits) sum += std::exp(z - m);
    cross_entropy += m + std::log(sum) - logits[batch.targets[static_cast<std::size_t>(t)]];
  }
  cross_entropy /= static_cast<double>(T);

  double balance = 0.0;  // Σ_layers L_Bal
  std::size_t moe_layers = 0;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    CAPTURE(l);
    ++moe_layers;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const double* gate = tensor(p + "mlp.gate.weight");
    const double* bias = tensor(p + "mlp.gate.e_score_correction_bias");
    std::vector<std::vector<double>> x, s;
    std::vector<std::int64_t> count(static_cast<std::size_t>(E), 0);
    for (std::int64_t t = 0; t < T; ++t) {
      x.push_back(normed(p + "post_attention_layernorm.weight", t));
      std::vector<double>& st = s.emplace_back(static_cast<std::size_t>(E));
      for (std::int64_t e = 0; e < E; ++e) {
        double z = 0.0;
        for (std::int64_t d = 0; d < D; ++d) z += gate[e * D + d] * x.back()[d];
        st[e] = 1.0 / (1.0 + std::exp(-z));
      }
      std::vector<std::int64_t> order(static_cast<std::size_t>(E));
      for (std::int64_t e = 0; e < E; ++e) order[e] = e;
      std::stable_sort(order.begin(), order.end(),
                       [&](std::int64_t a, std::int64_t b) { return st[a] + bias[a] > st[b] + bias[b]; });
      for (std::int64_t j = 0; j < K; ++j) ++count[order[j]];
    }
    // The selection above is the pass's own (a near-tie decided differently would show here).
    REQUIRE(load.tokens.size() == static_cast<std::size_t>(c.num_hidden_layers));
    CHECK(load.tokens[l] == count);

    std::vector<double> f(static_cast<std::size_t>(E));
    for (std::int64_t e = 0; e < E; ++e) {
      f[e] = static_cast<double>(E) * static_cast<double>(count[e]) / (static_cast<double>(K) * static_cast<double>(T));
    }
    std::vector<double> P(static_cast<std::size_t>(E), 0.0);
    std::vector<double> dgate(static_cast<std::size_t>(E * D), 0.0);  // d(α·L_Bal)/d gate
    for (std::int64_t t = 0; t < T; ++t) {
      double Z = 0.0, fs = 0.0;
      for (std::int64_t e = 0; e < E; ++e) {
        Z += s[t][e];
        fs += f[e] * s[t][e];
      }
      for (std::int64_t e = 0; e < E; ++e) {
        P[e] += s[t][e] / Z / static_cast<double>(T);
        const double dz =
            alpha / static_cast<double>(T) * s[t][e] * (1.0 - s[t][e]) * (f[e] * Z - fs) / (Z * Z);
        for (std::int64_t d = 0; d < D; ++d) dgate[e * D + d] += dz * x[t][d];
      }
    }
    double layer_balance = 0.0;
    for (std::int64_t e = 0; e < E; ++e) layer_balance += f[e] * P[e];
    balance += layer_balance;

    // Against the tensor's largest entry: each entry is a sum over the T tokens of terms of both
    // signs (f_i·Z_t − Σ_j f_j·s_{t,j} changes sign with i), so a small entry can be the remainder
    // of a cancellation and carry the rounding of its larger terms; a bound relative to each entry
    // would not be honest. Measured: 6e-16 of the largest; 1e-13 leaves room for other summation
    // orders (the pass multiplies dlogitsᵀ·x̂ as a matrix product); a wrong term is O(1) of it.
    const double* g = grads.data() + layout.spec(p + "mlp.gate.weight").offset;
    double scale = 0.0, err = 0.0;
    for (std::size_t i = 0; i < dgate.size(); ++i) {
      scale = std::max(scale, std::abs(dgate[i]));
      err = std::max(err, std::abs(g[i] - dgate[i]));
    }
    CHECK(scale > 0.0);
    CHECK(err <= 1e-13 * scale);
  }
  REQUIRE(moe_layers == 2);

  // Same formulas, summed in other orders (Eigen's vectorised reductions and products against the
  // plain loops above), so agreement to the last bit is not owed: one ulp of α·L_Bal ≈ 1.02 is
  // already 2.2e-16 relative, above 2e-16. Worst-case rounding bounds for sums of n terms are n·u
  // (u = 1.1e-16, n ≤ 300 here: ~3e-14); rounding errors add up like a random walk (~√n·u) in
  // practice. Measured: α·L_Bal off by 1 ulp, the objective bit-identical. 1e-14 (~45 ulp) leaves
  // room for another vector width or summation order (the sanitizer build, a rewrite of the pass);
  // a wrong term (dropping 1/Z, 1/T or K_r from f) moves either value by 10% or more.
  CHECK(std::abs(value - alpha * balance) <= 1e-14 * alpha * balance);
  CHECK(std::abs(objective - (cross_entropy + alpha * balance)) <= 1e-14 * objective);

  // The reasoning above: without the balance loss, no gradient reaches the routers at all.
  std::vector<double> plain(values.size(), 0.0);
  (void)moonlight::loss_and_gradients<double>(c, layout, values, batch.inputs, batch.targets, plain);
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    const moonlight::TensorSpec& t = layout.spec("model.layers." + std::to_string(l) + ".mlp.gate.weight");
    const double* g = plain.data() + t.offset;
    CHECK(std::all_of(g, g + muon::numel(t.shape), [](double v) { return v == 0.0; }));
  }
}

TEST_CASE("the aux-loss-free rule raises underloaded experts' bias, lowers overloaded ones', keeps the sum") {
  const Model model = Model::load(fixture("tiny_moonlight"));
  const moonlight::Config& c = model.config();
  const Batch batch = fixture_batch(st::File::open(fixture("tiny_moonlight") / "gradients.safetensors"));
  std::vector<float> grads(model.weights().data().size(), 0.0f);
  moonlight::ExpertLoad load;
  moonlight::loss_and_gradients(model, batch.inputs, batch.targets, grads, &load);
  moonlight::loss_and_gradients(model, batch.inputs, batch.targets, grads, &load);  // counts accumulate
  REQUIRE(load.tokens.size() == static_cast<std::size_t>(c.num_hidden_layers));
  CHECK(load.tokens[0].empty());  // the dense first layer
  for (std::int64_t l = 1; l < c.num_hidden_layers; ++l) {
    const auto& row = load.tokens[static_cast<std::size_t>(l)];
    std::int64_t total = 0;
    for (const std::int64_t n : row) total += n;
    CHECK(total == 2 * static_cast<std::int64_t>(batch.inputs.size()) * c.num_experts_per_tok);
  }

  // A hand-made load on layer 1: experts 0–1 over the mean (4), 2–3 at it, 4–7 under.
  load.tokens[1] = {10, 6, 4, 4, 3, 3, 2, 0};
  moonlight::Weights weights = moonlight::Weights(c);
  std::copy(model.weights().data().begin(), model.weights().data().end(), weights.data().begin());
  const std::string name = "model.layers.1.mlp.gate.e_score_correction_bias";
  const std::vector<float> before(weights.values(name).begin(), weights.values(name).end());
  moonlight::update_expert_bias(weights, c, load, 1e-3);
  const auto after = weights.values(name);
  // signs of mean − c: −1 −1 0 0 +1 +1 +1 +1, mean 0.25 → steps u·(sign − 0.25).
  const std::vector<double> step{-1.25e-3, -1.25e-3, -0.25e-3, -0.25e-3, 0.75e-3, 0.75e-3, 0.75e-3, 0.75e-3};
  double sum_before = 0.0, sum_after = 0.0;
  for (std::size_t e = 0; e < step.size(); ++e) {
    CAPTURE(e);
    // fp32 bias of magnitude ~0.1: one rounding (~1e-8) on steps ≥ 2.5e-4, i.e. ≤ 1e-4 relative.
    CHECK(after[e] - before[e] == doctest::Approx(step[e]).epsilon(1e-3));
    sum_before += before[e];
    sum_after += after[e];
  }
  CHECK(sum_after == doctest::Approx(sum_before).epsilon(1e-6));

  moonlight::ExpertLoad missing;
  CHECK_THROWS_AS(moonlight::update_expert_bias(weights, c, missing, 1e-3), muon::ShapeMismatch);
}
