// Data-parallel training over ZeRO-1 (moonlight/trainer.hpp with muon::distributed::MpiCommunicator),
// run by CTest under mpirun at 2 and 3 ranks: the same global batch gives the single-process
// result, a data-parallel run resumes bit for bit, and QK-clip clips alike on every rank.
// This binary has its own main (MPI must start before the tests and agree on the result).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "mpi_doctest_main.hpp"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

#include "fixtures.hpp"
#include "moonlight/checkpoint.hpp"
#include "moonlight/corpus.hpp"
#include "moonlight/trainer.hpp"
#include "muon/distributed/mpi.hpp"
#include "muon/distributed/self.hpp"

namespace fs = std::filesystem;
using muon::distributed::MpiCommunicator;
using moonlight::test::fixture;

namespace {

constexpr std::int64_t kGlobalBatch = 6;  // divisible by 1, 2 and 3 ranks

moonlight::PackedSequences noise_data() {
  moonlight::TokenStream s;
  std::uint64_t x = 99;
  for (int i = 0; i < 3000; ++i) s.tokens.push_back(static_cast<std::int32_t>((x = x * 6364136223846793005ull + 1) >> 33) % 290);
  s.source = "random";
  return {std::move(s), 16, 0.1};
}

moonlight::RunConfig run_with_micro_batch(std::int64_t micro_batch) {
  moonlight::RunConfig run{moonlight::Config::load(fixture("tiny_moonlight") / "config.json"),
                           {.steps = 4, .seq_len = 16, .micro_batch = micro_batch, .warmup_steps = 1, .eval_every = 2,
                            .eval_sequences = 5, .checkpoint_every = 2, .keep_checkpoints = 3,
                            // fp32 Newton–Schulz: in bf16 the reassociated sums of other batch splits
                            // would differ by bf16 ulps and hide a real data-parallel error.
                            .ns_precision = muon::NsPrecision::fp32}};
  run.muon.lr = 1e-2;
  return run;
}

// A directory every rank agrees on (rank 0's pid), removed by rank 0 at the end.
struct SharedDir {
  fs::path path;
  MpiCommunicator& comm;
  SharedDir(MpiCommunicator& c, const std::string& tag) : comm(c) {
    std::int64_t pid[] = {static_cast<std::int64_t>(::getpid())};
    comm.broadcast(std::span<std::int64_t>(pid), 0);
    path = fs::temp_directory_path() / ("moonlight_dp_" + tag + "_" + std::to_string(pid[0]));
    if (comm.rank() == 0) fs::remove_all(path);
    comm.barrier();
  }
  ~SharedDir() {
    comm.barrier();
    if (comm.rank() == 0) fs::remove_all(path);
  }
};

const fs::path tokenizer_file = fixture("bpe_sample_1024.tiktoken");

}  // namespace

TEST_CASE("data-parallel steps equal one process on the same global batch") {
  MpiCommunicator comm;
  SharedDir dir(comm, "equal");
  const moonlight::PackedSequences data = noise_data();
  REQUIRE(kGlobalBatch % comm.size() == 0);
  moonlight::Trainer<MpiCommunicator> dp(run_with_micro_batch(kGlobalBatch / comm.size()), data, tokenizer_file,
                                         dir.path / "dp", comm);
  // Every rank also runs the single-process reference, in its own directory.
  moonlight::Trainer<muon::distributed::SelfCommunicator> single(run_with_micro_batch(kGlobalBatch), data, tokenizer_file,
                                                          dir.path / ("single" + std::to_string(comm.rank())), {});
  for (int step = 0; step < 3; ++step) {
    const moonlight::StepMetrics a = dp.train_step(), b = single.train_step();
    // The same sequences; only the order of the float sums differs (per rank, then across ranks).
    CHECK(a.loss == doctest::Approx(b.loss).epsilon(1e-6));
    CHECK(a.grad_norm == doctest::Approx(b.grad_norm).epsilon(1e-5));
    CHECK(a.tokens == b.tokens);
  }
  // That rounding (≈1e-7 of a gradient) through three Newton–Schulz updates of lr 1e-2 stays
  // far below 1e-5 of weights of scale 0.1.
  double worst = 0.0;
  for (std::size_t i = 0; i < dp.weights().data().size(); ++i)
    worst = std::max(worst, static_cast<double>(std::abs(dp.weights().data()[i] - single.weights().data()[i])));
  CHECK(worst < 1e-5);
  // The router biases moved identically on every rank: the loads were summed over all ranks.
  const auto bias = dp.weights().values("model.layers.1.mlp.gate.e_score_correction_bias");
  const auto ref = single.weights().values("model.layers.1.mlp.gate.e_score_correction_bias");
  CHECK(std::equal(bias.begin(), bias.end(), ref.begin()));
}

TEST_CASE("a data-parallel run resumes bit for bit from its checkpoint") {
  MpiCommunicator comm;
  SharedDir dir(comm, "resume");
  const moonlight::PackedSequences data = noise_data();
  const moonlight::RunConfig run = run_with_micro_batch(kGlobalBatch / comm.size());
  moonlight::Trainer<MpiCommunicator> straight(run, data, tokenizer_file, dir.path / "straight", comm);
  straight.train([](const moonlight::StepMetrics&) {});
  {
    moonlight::Trainer<MpiCommunicator> interrupted(run, data, tokenizer_file, dir.path / "resumed", comm);
    CHECK_THROWS_WITH(interrupted.train([](const moonlight::StepMetrics& m) {
      if (m.step == 3) throw std::runtime_error("crash");
    }),
                      "crash");
  }
  const moonlight::VerifiedCheckpoint c = moonlight::open_checkpoint(dir.path / "resumed");
  CHECK(c.step == 2);
  moonlight::Trainer<MpiCommunicator> resumed(run, data, tokenizer_file, dir.path / "resumed", comm);
  resumed.resume(c);
  resumed.train([](const moonlight::StepMetrics&) {});
  const auto a = straight.weights().data(), b = resumed.weights().data();
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

TEST_CASE("QK-clip: every rank clips by the maxima of all ranks, so the weights stay equal bit for bit") {
  MpiCommunicator comm;
  SharedDir dir(comm, "qk_clip");
  const moonlight::PackedSequences data = noise_data();
  moonlight::RunConfig run = run_with_micro_batch(kGlobalBatch / comm.size());
  moonlight::RunConfig single_run = run_with_micro_batch(kGlobalBatch);
  // τ between the heads' maxima of the first step (1.3 to 2.1), so that some heads clip, some not.
  run.training.qk_clip = single_run.training.qk_clip = {.enabled = true, .tau = 1.7};
  moonlight::Trainer<MpiCommunicator> dp(run, data, tokenizer_file, dir.path / "dp", comm);
  moonlight::Trainer<muon::distributed::SelfCommunicator> single(single_run, data, tokenizer_file,
                                                                 dir.path / ("single" + std::to_string(comm.rank())), {});
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    const moonlight::StepMetrics a = dp.train_step(), b = single.train_step();
    REQUIRE(a.qk_clipped.has_value());
    // The first step's weights are the same everywhere: the maxima over all ranks' sequences are
    // the single process's over the same global batch, within fp32 rounding (each rank stacks
    // fewer sequences per pass: other row counts, other BLAS blocking).
    if (step == 0) {
      CHECK(moonlight::test::same_maxima(a.max_logits, b.max_logits));
      CHECK(a.qk_clipped == b.qk_clipped);
      CHECK(*a.qk_clipped > 0);
      CHECK(*a.qk_clipped < 12);
    }
    // Right after the clip (before the next step's all-gather could hide a difference), every
    // rank holds rank 0's weights bit for bit.
    const auto mine = dp.weights().data();
    std::vector<float> rank0(mine.begin(), mine.end());
    comm.broadcast(std::span<float>(rank0), 0);
    std::int64_t differ[] = {std::memcmp(rank0.data(), mine.data(), mine.size() * sizeof(float)) != 0 ? 1 : 0};
    comm.all_reduce(std::span<std::int64_t>(differ), muon::distributed::ReduceOp::max);
    CHECK(differ[0] == 0);
  }
}

int main(int argc, char** argv) { return muon::test::run_doctest_under_mpi(argc, argv); }
