// A step recorded once replays right: the proof, without a GPU, that every per-step number
// reaches the backend through the step block (muon/step_driver.hpp) and none is baked into an
// operation's arguments. The recording backend below queues its operations instead of running
// them while the tape records, as a CUDA graph capture does, and refuses what a capture cannot
// hold (allocations, waiting copies, results the host reads).
#include <doctest/doctest.h>

#include <functional>
#include <memory>
#include <muon/muon.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "hybrid_model.hpp"
#include "toy_backend.hpp"

namespace {

struct Tape {
  bool recording = false;
  std::vector<std::function<void()>> operations;
  void replay() const {
    for (const auto& op : operations) op();
  }
};

class RecordingBackend : public muon::test::ToyBackend {
 public:
  RecordingBackend() = default;
  explicit RecordingBackend(std::shared_ptr<Tape> tape) : tape_(std::move(tape)) {}

  Buffer allocate(std::int64_t n) {
    refuse("allocate");
    return ToyBackend::allocate(n);
  }
  HostBuffer allocate_host(std::int64_t n) {
    refuse("allocate_host");
    return ToyBackend::allocate_host(n);
  }
  void gemm(float alpha, muon::MatrixStack<const float> a, muon::Transpose ta, muon::MatrixStack<const float> b,
            muon::Transpose tb, float beta, muon::MatrixStack<float> c) {
    run([=](ToyBackend& t) { t.gemm(alpha, a, ta, b, tb, beta, c); });
  }
  void gram(float alpha, muon::MatrixStack<const float> x, muon::GramSide side, float beta, muon::MatrixStack<float> c) {
    run([=](ToyBackend& t) { t.gram(alpha, x, side, beta, c); });
  }
  void axpby(float alpha, std::span<const float> x, float beta, std::span<float> y) {
    run([=](ToyBackend& t) { t.axpby(alpha, x, beta, y); });
  }
  void normalize(muon::MatrixStack<float> x, float eps, muon::NormEps mode) {
    run([=](ToyBackend& t) { t.normalize(x, eps, mode); });
  }
  void normalize_rows(muon::MatrixStack<float> x, std::span<float> v, muon::RowNormStep s) {
    run([=](ToyBackend& t) { t.normalize_rows(x, v, s); });
  }
  void momentum(std::span<float> m, std::span<const float> g, muon::MomentumStep s, std::span<float> u) {
    run([=](ToyBackend& t) { t.momentum(m, g, s, u); });
  }
  void adamw(std::span<float> w, std::span<const float> g, std::span<float> m, std::span<float> v, muon::AdamWStep s) {
    run([=](ToyBackend& t) { t.adamw(w, g, m, v, s); });
  }
  void update(std::span<float> w, std::span<const float> o, muon::UpdateStep s) {
    run([=](ToyBackend& t) { t.update(w, o, s); });
  }
  void upload(std::span<const float> host, std::span<float> y) {
    run([=](ToyBackend& t) { t.upload(host, y); });
  }
  double sum_squares(std::span<const float> x) {
    refuse("sum_squares");
    return ToyBackend::sum_squares(x);
  }
  void to_host(std::span<const float> x, std::span<float> host) {
    refuse("to_host");
    ToyBackend::to_host(x, host);
  }
  void from_host(std::span<const float> host, std::span<float> y) {
    refuse("from_host");
    ToyBackend::from_host(host, y);
  }

 private:
  template <class Op>
  void run(Op op) {
    if (tape_->recording)
      tape_->operations.push_back([op]() mutable {
        ToyBackend toy;
        op(toy);
      });
    else
      op(*this);
  }
  void refuse(const char* operation) const {
    if (tape_->recording) throw std::logic_error(std::string(operation) + " while recording: a capture cannot hold it");
  }
  std::shared_ptr<Tape> tape_ = std::make_shared<Tape>();
};

static_assert(muon::Backend<RecordingBackend>);

using Model = muon::test::HybridModel;

}  // namespace

namespace {

void check_replay_equals_eager(bool normuon) {
  // Every per-step number moves: warmup then cosine decay of the lr, clipping on every step (the
  // gradients' norm is about 12), decoupled weight decay, AdamW's bias corrections.
  const muon::Options options{.lr = 0.02,
                              .weight_decay = 0.1,
                              .muon = {.normuon = {.enabled = normuon}},
                              .schedule = muon::WarmupCosine{.warmup_steps = 2, .total_steps = 6, .final_ratio = 0.1},
                              .max_grad_norm = 0.5};
  constexpr int kSteps = 5;
  Model eager_model, replayed_model;
  const Model initial;
  muon::Optimizer<RecordingBackend> eager(eager_model.table(), options);
  std::vector<muon::StepReport> eager_reports;
  for (int i = 0; i < kSteps; ++i) eager_reports.push_back(eager.step());

  const auto tape = std::make_shared<Tape>();
  muon::Optimizer<RecordingBackend> replayed(replayed_model.table(), options, RecordingBackend(tape));
  muon::StepReport report = replayed.begin_step(replayed.check_gradients());
  tape->recording = true;
  replayed.apply();
  tape->recording = false;
  CHECK(replayed_model.w == initial.w);  // recording ran nothing
  CHECK(replayed_model.emb == initial.emb);
  for (int i = 0; i < kSteps; ++i) {
    if (i > 0) report = replayed.begin_step(replayed.check_gradients());
    CHECK(report.grad_scale < 0.1);
    CHECK(report.lr == eager_reports[static_cast<std::size_t>(i)].lr);
    tape->replay();
  }
  CHECK(replayed.step_count() == kSteps);
  CHECK(eager_reports.front().lr != eager_reports.back().lr);
  CHECK(replayed_model.w == eager_model.w);
  CHECK(replayed_model.experts == eager_model.experts);
  CHECK(replayed_model.emb == eager_model.emb);
  CHECK(replayed_model.norm == eager_model.norm);
  const auto a = replayed.export_state(), b = eager.export_state();
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (std::size_t i = 0; i < a.tensors.size(); ++i) CHECK(a.tensors[i].values == b.tensors[i].values);
}

}  // namespace

TEST_CASE("a step recorded once and replayed N times equals N eager steps, bit for bit") {
  check_replay_equals_eager(false);
}
// NorMuon's second moments are state the replay carries from step to step, like the momenta.
TEST_CASE("a NorMuon step recorded once and replayed N times equals N eager steps, bit for bit") {
  check_replay_equals_eager(true);
}

TEST_CASE("the recording backend refuses what a capture cannot hold") {
  const auto tape = std::make_shared<Tape>();
  RecordingBackend backend(tape);
  tape->recording = true;
  std::vector<float> x(4, 1.0f);
  CHECK_THROWS_AS((void)backend.sum_squares(x), std::logic_error);
  CHECK_THROWS_AS((void)backend.allocate(4), std::logic_error);
  backend.axpby(2.0f, x, 0.0f, x);
  CHECK(x[0] == 1.0f);  // queued, not run
  tape->replay();
  CHECK(x[0] == 2.0f);
}
