// The ZeRO-1 planner (whole-matrix owners, LPT, AdamW fill, bucket layout), and the ZeRO-1
// optimizer on the one-rank communicator against the single-process optimizer.
#include <doctest/doctest.h>

#include <filesystem>
#include <map>
#include <muon/backends/eigen.hpp>
#include <muon/distributed/plan.hpp>
#include <muon/distributed/self.hpp>
#include <muon/distributed/zero1.hpp>
#include <muon/optimizer.hpp>
#include <numeric>
#include <random>

#include "moonlight_16b_table.hpp"
#include "zero_support.hpp"

using muon::Rule;
using muon::distributed::Plan;
using muon::distributed::plan_zero1;
using muon::distributed::TensorToShard;

namespace {

// Every element of every parameter is in exactly one piece; Muon pieces are whole matrices; the
// bucket layout tiles the flat buffer: each rank's pieces fill its block without gaps.
void check_partition(const std::vector<TensorToShard>& table, const Plan& plan) {
  std::map<std::size_t, std::vector<std::pair<std::int64_t, std::int64_t>>> ranges;
  for (const muon::distributed::Piece& p : plan.pieces) {
    ranges[p.param].push_back({p.offset, p.size});
    REQUIRE(p.rule == table[p.param].rule);
    if (p.rule == Rule::muon) {
      const auto& s = table[p.param].shape;
      REQUIRE(p.size == s[s.size() - 2] * s.back());
      REQUIRE(p.offset % p.size == 0);
    }
  }
  std::int64_t total = 0;
  for (std::size_t i = 0; i < table.size(); ++i) {
    auto& r = ranges[i];
    std::sort(r.begin(), r.end());
    std::int64_t next = 0;
    for (const auto& [offset, size] : r) {
      REQUIRE(offset == next);
      next += size;
    }
    REQUIRE(next == muon::numel(table[i].shape));
    total += next;
  }
  REQUIRE(plan.total_elements == total);
  std::int64_t flat = 0;
  for (const muon::distributed::Bucket& b : plan.buckets) {
    REQUIRE(b.offset == flat);
    std::vector<std::int64_t> filled(b.counts.size(), 0);
    for (const std::size_t k : b.pieces) {
      const muon::distributed::Piece& p = plan.pieces[k];
      REQUIRE(p.shard_offset == filled[static_cast<std::size_t>(p.owner)]);
      filled[static_cast<std::size_t>(p.owner)] += p.size;
    }
    REQUIRE(filled == b.counts);
    REQUIRE(b.displacements.front() == 0);
    for (std::size_t r = 1; r < b.counts.size(); ++r)
      REQUIRE(b.displacements[r] == b.displacements[r - 1] + b.counts[r - 1]);
    flat += b.size;
  }
  REQUIRE(flat == total);
}

}  // namespace

TEST_CASE("ns_cost is steps·(4n²m + 2n³) with n the smaller side") {
  CHECK(muon::distributed::ns_cost(8, 2, 5) == 5.0 * (4 * 4 * 8 + 2 * 8));
  CHECK(muon::distributed::ns_cost(2, 8, 5) == muon::distributed::ns_cost(8, 2, 5));
}

TEST_CASE("the plan partitions every parameter, splits expert stacks by expert and tiles the buckets") {
  const std::vector<TensorToShard> table{{"emb", {50, 8}, Rule::adamw},   {"w", {16, 8}, Rule::muon},
                                      {"experts", {5, 12, 8}, Rule::muon}, {"norm", {8}, Rule::adamw},
                                      {"head", {50, 8}, Rule::adamw}};
  for (const int world : {1, 2, 3, 4, 7})
    for (const std::int64_t bucket : {std::int64_t{1}, std::int64_t{200}, std::int64_t{1} << 20}) {
      CAPTURE(world);
      CAPTURE(bucket);
      const Plan plan = plan_zero1(table, world, {5, bucket});
      check_partition(table, plan);
      int expert_pieces = 0;
      for (const auto& p : plan.pieces) expert_pieces += p.param == 2;
      CHECK(expert_pieces == 5);
    }
  // Reverse table order: the head (last) is in the first bucket, the embedding in the last.
  const Plan plan = plan_zero1(table, 2, {5, 1});
  for (const auto& p : plan.pieces)
    if (p.param == 4) CHECK(p.bucket == 0);
    else if (p.param == 0) CHECK(p.bucket == static_cast<int>(plan.buckets.size()) - 1);
}

TEST_CASE("LPT gives equal experts evenly to the ranks and stays within Graham's bound") {
  const Plan even = plan_zero1(std::vector<TensorToShard>{{"experts", {64, 32, 16}, Rule::muon}}, 8);
  CHECK(even.ns_imbalance() == 1.0);
  for (const auto& r : even.ranks) CHECK(r.muon_elements == 8 * 32 * 16);

  std::mt19937 gen(7);
  std::uniform_int_distribution<std::int64_t> side(4, 96);
  std::vector<TensorToShard> table;
  for (int i = 0; i < 50; ++i) table.push_back({"m" + std::to_string(i), {side(gen), side(gen)}, Rule::muon});
  for (const int world : {2, 5, 8}) {
    const Plan plan = plan_zero1(table, world);
    // The optimum is at least the mean load and at least the largest unit.
    double total = 0.0, largest = 0.0, worst = 0.0;
    for (const auto& t : table) {
      const double c = muon::distributed::ns_cost(t.shape[0], t.shape[1], 5);
      total += c;
      largest = std::max(largest, c);
    }
    for (const auto& r : plan.ranks) worst = std::max(worst, r.ns_flops);
    const double lower_bound = std::max(total / world, largest);
    CHECK(worst <= (4.0 / 3.0 - 1.0 / (3.0 * world)) * lower_bound * (1 + 1e-12));
  }
}

TEST_CASE("Moonlight-16B at 8, 16 and 64 ranks: NS max/mean <= 1.05, state per rank <= 1/N + 2%") {
  const auto table = muon::test::moonlight_16b_table();
  std::size_t muon_matrices = 0;
  for (const auto& t : table) muon_matrices += t.rule == Rule::muon;
  CHECK(muon_matrices == 5207);  // docs/algorithms.md §11.2
  for (const int world : {8, 16, 64}) {
    CAPTURE(world);
    const Plan plan = plan_zero1(table, world);
    CHECK(plan.total_elements == 15'960'110'208 - 26 * 64);  // docs/moonlight-architecture.md §2, less router biases
    CHECK(plan.ns_imbalance() <= 1.05);
    std::int64_t state = 0, worst = 0;
    for (const auto& r : plan.ranks) {
      state += r.state_elements();
      worst = std::max(worst, r.state_elements());
    }
    CHECK(static_cast<double>(worst) <= static_cast<double>(state) / world * 1.02);
  }
}

TEST_CASE("bad planner input is rejected with the field named") {
  const std::vector<TensorToShard> table{{"w", {4, 4}, Rule::muon}};
  CHECK_THROWS_WITH_AS((void)plan_zero1(table, 0), doctest::Contains("world size"), muon::InvalidArgument);
  CHECK_THROWS_WITH_AS((void)plan_zero1(table, 2, {5, 0}), doctest::Contains("bucket_elements"), muon::InvalidArgument);
  CHECK_THROWS_WITH_AS((void)plan_zero1(std::vector<TensorToShard>{{"v", {4}, Rule::muon}}, 2), doctest::Contains("'v'"),
                       muon::InvalidArgument);
}

TEST_CASE("on one rank, ZeRO-1 equals the single-process optimizer bit for bit, and their files interchange") {
  using Zero = muon::distributed::ZeroOptimizer<muon::EigenBackend, muon::distributed::SelfCommunicator>;
  muon::test::ZeroModel zm, ref;
  const muon::Options options{.lr = 0.02, .weight_decay = 0.1};
  Zero zero(zm.table(), options, {}, {}, {.bucket_elements = 300});
  REQUIRE(zero.plan().buckets.size() > 2);
  muon::Optimizer<muon::EigenBackend> single(ref.table(), options);
  for (int step = 0; step < 4; ++step) {
    zm.set_rank_gradients(step, 0);
    ref.set_mean_gradients(step, 1);
    const auto a = zero.step();
    const auto b = single.step();
    CHECK(a.grad_norm == doctest::Approx(b.grad_norm).epsilon(1e-12));
  }
  CHECK(zm.values() == ref.values());

  const auto path = std::filesystem::temp_directory_path() / ("muon_zero_self_" + std::to_string(::getpid()));
  zero.save(path);
  muon::test::ZeroModel resumed;
  resumed.set_values(zm.values());
  muon::Optimizer<muon::EigenBackend> from_zero(resumed.table(), options);
  muon::load_state(from_zero, path);
  CHECK(from_zero.step_count() == 4);
  muon::save_state(single, path);
  Zero from_single(zm.table(), options, {}, {}, {.bucket_elements = 300});
  from_single.load(path);
  std::filesystem::remove(path);
  for (int step = 4; step < 6; ++step) {
    zm.set_rank_gradients(step, 0);
    resumed.set_mean_gradients(step, 1);
    (void)from_single.step();
    (void)from_zero.step();
  }
  CHECK(zm.values() == resumed.values());
}

namespace {

// The one-rank communicator, counting the calls that a step makes the host wait on: on NCCL every
// control operation waits for the device, the bulk collectives do not (nccl.hpp).
struct CountingCommunicator : muon::distributed::SelfCommunicator {
  int* waits;
  int* bulk;
  Request reduce_scatter(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts,
                         muon::distributed::ReduceOp op) {
    ++*bulk;
    return SelfCommunicator::reduce_scatter(send, recv, counts, op);
  }
  Request all_gather(std::span<const float> send, std::span<float> recv, std::span<const std::int64_t> counts) {
    ++*bulk;
    return SelfCommunicator::all_gather(send, recv, counts);
  }
  template <class T>
  void all_reduce(std::span<T> data, muon::distributed::ReduceOp op) {
    ++*waits;
    SelfCommunicator::all_reduce(data, op);
  }
  template <class Fill>
  void reduce_to_host(std::span<double> result, muon::distributed::ReduceOp op, Fill&& fill) {
    ++*waits;
    SelfCommunicator::reduce_to_host(result, op, std::forward<Fill>(fill));
  }
  template <class T>
  void broadcast(std::span<T> data, int root) {
    ++*waits;
    SelfCommunicator::broadcast(data, root);
  }
  void barrier() { ++*waits; }
};
static_assert(muon::distributed::Communicator<CountingCommunicator>);

}  // namespace

TEST_CASE("a ZeRO-1 step makes one control reduction (the one host synchronisation on NCCL) and two bulk collectives per bucket") {
  int waits = 0, bulk = 0;
  muon::test::ZeroModel zm, ref;
  const muon::Options options{.lr = 0.02, .weight_decay = 0.1, .max_grad_norm = 0.5};
  muon::distributed::ZeroOptimizer<muon::EigenBackend, CountingCommunicator> zero(
      zm.table(), options, CountingCommunicator{{}, &waits, &bulk}, {}, {.bucket_elements = 300});
  const auto buckets = static_cast<int>(zero.plan().buckets.size());
  REQUIRE(buckets > 2);
  muon::Optimizer<muon::EigenBackend> single(ref.table(), options);
  for (int step = 0; step < 3; ++step) {
    zm.set_rank_gradients(step, 0);
    ref.set_mean_gradients(step, 1);
    waits = bulk = 0;
    const auto a = zero.step();
    CHECK(waits == 1);
    CHECK(bulk == 2 * buckets);
    // The norm from the per-piece sums is the single-process optimizer's (clipping is on).
    CHECK(a.grad_norm == doctest::Approx(single.step().grad_norm).epsilon(1e-12));
  }
  CHECK(zm.values() == ref.values());
}
