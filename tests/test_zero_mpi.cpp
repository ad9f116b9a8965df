// ZeRO-1 over MPI ranks (CTest runs this binary under mpirun at 1, 2, 3 and 4 ranks): equal to
// the single-process optimizer, checkpoints across world sizes, and errors agreed on every rank.
// A failed REQUIRE would leave the other ranks waiting in a collective, so the checks that
// precede a collective are CHECKs; CTest's timeout catches a hang.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "mpi_doctest_main.hpp"
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <muon/backends/eigen.hpp>
#include <muon/distributed/mpi.hpp>
#include <muon/distributed/zero1.hpp>
#include <muon/optimizer.hpp>
#include <muon/state_file.hpp>
#include <optional>

#include "zero_support.hpp"

using muon::distributed::MpiCommunicator;
using muon::test::ZeroModel;
using Zero = muon::distributed::ZeroOptimizer<muon::EigenBackend, MpiCommunicator>;
using Single = muon::Optimizer<muon::EigenBackend>;

namespace {

const muon::Options kOptions{.lr = 0.02, .weight_decay = 0.1};
// NorMuon's second moments live with their matrix's owner (one expert's rows per piece).
const muon::Options kNorMuon{.lr = 0.02, .weight_decay = 0.1, .muon = {.normuon = {.enabled = true}}};
// Small buckets, so that every rank owns pieces in several buckets and the overlap path runs.
const muon::distributed::ZeroOptions kZero{.bucket_elements = 300};

// The ranks [0, size) of `world` as a communicator of their own; nullopt on the others.
std::optional<MpiCommunicator> first_ranks(const MpiCommunicator& world, int size) {
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_Comm_split(world.native(), world.rank() < size ? 0 : MPI_UNDEFINED, world.rank(), &sub);
  if (sub == MPI_COMM_NULL) return std::nullopt;
  MpiCommunicator comm(sub);  // duplicates it
  MPI_Comm_free(&sub);
  return comm;
}

// A file name every rank agrees on: rank 0's pid.
std::filesystem::path shared_path(MpiCommunicator& comm, const std::string& name) {
  std::int64_t pid[] = {static_cast<std::int64_t>(::getpid())};
  comm.broadcast(std::span<std::int64_t>(pid), 0);
  return std::filesystem::temp_directory_path() / ("muon_zero_" + name + "_" + std::to_string(pid[0]));
}

}  // namespace

namespace {

void check_equal_to_single_process(const muon::Options& options) {
  MpiCommunicator comm;
  ZeroModel zm, ref;
  Zero zero(zm.table(), options, comm, {}, kZero);
  Single single(ref.table(), options);
  for (int step = 0; step < 5; ++step) {
    zm.set_rank_gradients(step, comm.rank());
    ref.set_mean_gradients(step, comm.size());
    const muon::StepReport a = zero.step();
    const muon::StepReport b = single.step();
    // The squared norms are summed in another order (per owner, then across ranks): double
    // rounding, far below float resolution.
    CHECK(a.grad_norm == doctest::Approx(b.grad_norm).epsilon(1e-12));
  }
  CHECK(zm.values() == ref.values());
  // State only on the owners: the ranks' buffers add up to the single-process optimizer's.
  std::int64_t held[] = {zero.state_elements()};
  comm.all_reduce(std::span<std::int64_t>(held), muon::distributed::ReduceOp::sum);
  CHECK(held[0] == single.state_elements());
  if (comm.size() > 1) CHECK(zero.state_elements() < single.state_elements());
}

}  // namespace

TEST_CASE("after K steps every rank's parameters equal the single-process optimizer's, bit for bit") {
  check_equal_to_single_process(kOptions);
}
TEST_CASE("NorMuon: after K steps every rank's parameters equal the single-process optimizer's, bit for bit") {
  check_equal_to_single_process(kNorMuon);
}

TEST_CASE("set_options changes every owner's hyper-parameters from the next step, as in the single-process optimizer") {
  MpiCommunicator comm;
  ZeroModel zm, ref;
  Zero zero(zm.table(), kOptions, comm, {}, kZero);
  Single single(ref.table(), kOptions);
  muon::Options later = kOptions;
  later.lr = 0.005;
  later.weight_decay = 0.2;
  for (int step = 0; step < 4; ++step) {
    if (step == 2) {
      zero.set_options(later);
      single.set_options(later);
    }
    zm.set_rank_gradients(step, comm.rank());
    ref.set_mean_gradients(step, comm.size());
    (void)zero.step();
    (void)single.step();
  }
  CHECK(zm.values() == ref.values());
  CHECK(zero.options().lr == 0.005);
  if (comm.size() == 1) return;
  muon::Options differing = later;
  if (comm.rank() == 0) differing.muon.ns.gram_restart = 3;  // every field takes part, nested ones too
  CHECK_THROWS_WITH_AS(zero.set_options(differing), doctest::Contains("Options.muon.ns.gram_restart differs between ranks"),
                       muon::InvalidArgument);
  CHECK(zero.options().lr == 0.005);
}

TEST_CASE("with clipping, ZeRO-1 matches the single-process optimizer within float rounding") {
  MpiCommunicator comm;
  muon::Options options = kOptions;
  options.max_grad_norm = 1.0;  // the gradients' norm is about 35: every step clips
  ZeroModel zm, ref;
  Zero zero(zm.table(), options, comm, {}, kZero);
  Single single(ref.table(), options);
  for (int step = 0; step < 5; ++step) {
    zm.set_rank_gradients(step, comm.rank());
    ref.set_mean_gradients(step, comm.size());
    CHECK(zero.step().grad_scale < 1.0);
    (void)single.step();
  }
  // The global norm is summed in another order, which can move the float clip factor by one
  // ulp (6e-8 relative); five steps of lr 0.02 keep the parameters within 1e-6 of each other.
  CHECK(muon::test::max_abs_diff(zm.values(), ref.values()) <= 1e-6);
}

namespace {

void check_resume_across_world_sizes(const muon::Options& options) {
  MpiCommunicator world;
  const int n = world.size(), m = std::max(1, n - 1);
  const auto path = shared_path(world, "resume");
  for (const auto& [writers, readers] : {std::pair{n, m}, std::pair{m, n}}) {
    CAPTURE(writers);
    CAPTURE(readers);
    ZeroModel zm, ref, single_model;
    Single reference(ref.table(), options);
    for (int step = 0; step < 6; ++step) {
      ref.set_mean_gradients(step, step < 3 ? writers : readers);
      (void)reference.step();
    }
    if (auto comm = first_ranks(world, writers)) {
      Zero zero(zm.table(), options, *comm, {}, kZero);
      for (int step = 0; step < 3; ++step) {
        zm.set_rank_gradients(step, comm->rank());
        (void)zero.step();
      }
      zero.save(path);
    }
    // The ranks that did not write get the model as it was saved.
    for (auto& t : zm.tensors) world.broadcast(std::span<float>(t.value), 0);
    single_model.set_values(zm.values());
    if (auto comm = first_ranks(world, readers)) {
      Zero zero(zm.table(), options, *comm, {}, kZero);
      zero.load(path);
      CHECK(zero.step_count() == 3);
      for (int step = 3; step < 6; ++step) {
        zm.set_rank_gradients(step, comm->rank());
        (void)zero.step();
      }
      CHECK(zm.values() == ref.values());
    }
    Single single(single_model.table(), options);
    muon::load_state(single, path);
    for (int step = 3; step < 6; ++step) {
      single_model.set_mean_gradients(step, readers);
      (void)single.step();
    }
    CHECK(single_model.values() == ref.values());
    world.barrier();
  }
  if (world.rank() == 0) std::filesystem::remove(path);
}

}  // namespace

TEST_CASE("a checkpoint written at N ranks resumes at M ranks, and in the single-process optimizer, as an uninterrupted run") {
  check_resume_across_world_sizes(kOptions);
}
// The owner of each matrix saves its v; the file holds whole [rows] and [experts, rows] tensors.
TEST_CASE("NorMuon: a checkpoint written at N ranks resumes at M ranks, and in the single-process optimizer, as an uninterrupted run") {
  check_resume_across_world_sizes(kNorMuon);
}

TEST_CASE("parameter tables or options that differ between ranks are rejected on every rank, without a hang") {
  MpiCommunicator comm;
  const bool last = comm.rank() == comm.size() - 1;
  // A table that is wrong on one rank only: the others learn which rank and why.
  ZeroModel zm;
  std::vector<muon::Parameter> table = zm.table();
  if (last) table[1].name = table[0].name;
  try {
    Zero zero(table, kOptions, comm);
    FAIL("a duplicate name on the last rank was accepted");
  } catch (const muon::distributed::CommError& e) {
    CHECK(!last);
    CHECK(std::string(e.what()).find("rank " + std::to_string(comm.size() - 1) + " failed") != std::string::npos);
    CHECK(std::string(e.what()).find("appears twice") != std::string::npos);
  } catch (const muon::InvalidArgument& e) {
    CHECK(last);
    CHECK(std::string(e.what()).find("appears twice") != std::string::npos);
  }
  if (comm.size() == 1) return;
  // Valid tables that differ: every rank names the first entry that differs.
  ZeroModel other(last);
  CHECK_THROWS_WITH_AS(Zero(other.table(), kOptions, comm), doctest::Contains("differ between ranks at entry 2"),
                       muon::InvalidArgument);
  muon::Options options = kOptions;
  if (last) options.muon.ns.method = muon::NsMethod::gram;
  CHECK_THROWS_WITH_AS(Zero(zm.table(), options, comm), doctest::Contains("Options.muon.ns.method differs between ranks"),
                       muon::InvalidArgument);
  // Another bucket size would give another layout, and mismatched collectives.
  const muon::distributed::ZeroOptions zero{.bucket_elements = last ? 1000 : 300};
  CHECK_THROWS_WITH_AS(Zero(zm.table(), kOptions, comm, {}, zero),
                       doctest::Contains("ZeroOptions.bucket_elements differs between ranks"), muon::InvalidArgument);
}

TEST_CASE("a checkpoint that one rank cannot read or rank 0 cannot write fails on every rank and changes nothing") {
  MpiCommunicator comm;
  const bool last = comm.rank() == comm.size() - 1;
  ZeroModel zm, ref;
  Zero zero(zm.table(), kOptions, comm, {}, kZero);
  Single single(ref.table(), kOptions);
  zm.set_rank_gradients(0, comm.rank());
  ref.set_mean_gradients(0, comm.size());
  (void)zero.step();
  (void)single.step();
  const auto path = shared_path(comm, "bad");
  zero.save(path);
  const auto missing = path.string() + (last ? ".missing" : "");
  try {
    zero.load(missing);
    FAIL("a file missing on the last rank was loaded");
  } catch (const muon::distributed::CommError& e) {
    CHECK(!last);
    CHECK(std::string(e.what()).find(".missing") != std::string::npos);
  } catch (const muon::FileError&) {
    CHECK(last);
  }
  CHECK_THROWS_AS(zero.save("/nonexistent-directory/opt.safetensors"), muon::Error);
  CHECK(zero.step_count() == 1);
  // Nothing changed: the next step equals the reference's.
  zm.set_rank_gradients(1, comm.rank());
  ref.set_mean_gradients(1, comm.size());
  (void)zero.step();
  (void)single.step();
  CHECK(zm.values() == ref.values());
  comm.barrier();
  if (comm.rank() == 0) std::filesystem::remove(path);
}

TEST_CASE("a NaN gradient on one rank rejects or skips the step on every rank and changes nothing") {
  MpiCommunicator comm;
  const bool last = comm.rank() == comm.size() - 1;
  for (const auto policy : {muon::OnNonFinite::fail, muon::OnNonFinite::skip}) {
    muon::Options options = kOptions;
    options.on_non_finite = policy;
    ZeroModel zm, ref;
    Zero zero(zm.table(), options, comm, {}, kZero);
    Single single(ref.table(), options);
    zm.set_rank_gradients(0, comm.rank());
    ref.set_mean_gradients(0, comm.size());
    (void)zero.step();
    (void)single.step();
    const auto before = zm.values();
    zm.set_rank_gradients(1, comm.rank());
    if (last) zm.tensors[4].grad[100] = std::numeric_limits<float>::quiet_NaN();
    if (policy == muon::OnNonFinite::fail) {
      try {
        (void)zero.step();
        FAIL("the NaN step was accepted");
      } catch (const muon::NonFiniteGradient& e) {
        CHECK(e.parameter() == zm.tensors[4].name);
      }
    } else {
      CHECK(zero.step().skipped);
      CHECK(zero.skipped_steps() == 1);
    }
    CHECK(zm.values() == before);
    CHECK(zero.step_count() == 1);
    // The state did not move either: the next good step equals the reference's.
    zm.set_rank_gradients(1, comm.rank());
    ref.set_mean_gradients(1, comm.size());
    (void)zero.step();
    (void)single.step();
    CHECK(zm.values() == ref.values());
  }
}

int main(int argc, char** argv) { return muon::test::run_doctest_under_mpi(argc, argv); }

// NorMuon's switch decides the state's tensors, so it cannot be turned by a load or by
// set_options; every rank throws (its own mismatch, or a CommError quoting the first rank's).
TEST_CASE("NorMuon: a checkpoint or options that turn NorMuon the other way are refused on every rank") {
  MpiCommunicator comm;
  const auto with_v = shared_path(comm, "normuon_on"), without_v = shared_path(comm, "normuon_off");
  ZeroModel zm;
  Zero on(zm.table(), kNorMuon, comm, {}, kZero), off(zm.table(), kOptions, comm, {}, kZero);
  zm.set_rank_gradients(0, comm.rank());
  (void)on.step();
  (void)off.step();
  on.save(with_v);
  off.save(without_v);
  CHECK_THROWS_WITH(off.load(with_v), doctest::Contains("normuon_v' matches no parameter of this optimizer (NorMuon is off here)"));
  CHECK_THROWS_WITH(on.load(without_v), doctest::Contains("/normuon_v' is missing (parameter '"));
  CHECK(on.step_count() == 1);
  CHECK_THROWS_WITH_AS(on.set_options(kOptions), doctest::Contains("MuonOptions.normuon.enabled cannot change"),
                       muon::InvalidArgument);
  CHECK(on.options().muon.normuon.enabled);
  comm.barrier();
  if (comm.rank() == 0) {
    std::filesystem::remove(with_v);
    std::filesystem::remove(without_v);
  }
}
