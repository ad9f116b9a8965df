// ZeRO-1 figures. Run it under mpirun: `mpirun -np N bench/bench_zero` (1, 2 and 4 ranks).
//
// BM_plan_moonlight (any N, printed once): the planner on the full Moonlight-16B table at 8, 16
// and 64 ranks, nothing allocated. Counters: NS max/mean; optimizer state of the fullest rank
// over 1/N of the single-process state; per-rank bytes received per step (ring model) over ZeRO-1
// AdamW's, for this plan and, computed, for Moonlight's Algorithm 1 (flat ZeRO-1 slices in table
// order, bf16 gather of every matrix that straddles a slice boundary, NS repeated on each of its
// holders) and for a per-bucket gather (every rank gathers all Muon matrices in bf16 and runs
// every NS); and the Newton–Schulz work each design does over the work that must be done.
//
// BM_zero_step: one ZeRO-1 step of a Moonlight-shaped model at 1/8 width on the MPI ranks, time =
// the slowest rank's. BM_single_step: the single-process optimizer on the same model, same run.
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <chrono>
#include <muon/backends/eigen.hpp>
#include <muon/distributed/mpi.hpp>
#include <muon/distributed/zero1.hpp>
#include <muon/muon.hpp>
#include <random>

#include "moonlight_16b_table.hpp"
#include "moonlight_table.hpp"

namespace {

using muon::Rule;
using muon::distributed::TensorToShard;

struct Designs {
  double ours = 0, algorithm1 = 0, bucket_gather = 0;  // max bytes per rank per step
  double ns_ours = 0, ns_algorithm1 = 0, ns_bucket_gather = 0, ns_needed = 0;
};

// Ring receive volumes per rank: reduce-scatter and all-gather (fp32) of everything not owned.
Designs compare_designs(const std::vector<TensorToShard>& table, const muon::distributed::Plan& plan) {
  const int n = plan.world;
  const double total = static_cast<double>(plan.total_elements), f = (n - 1.0) / n;
  Designs d;
  for (const auto& r : plan.ranks) d.ours = std::max(d.ours, static_cast<double>(r.comm_bytes));
  const double adamw_zero1 = 2.0 * 4.0 * f * total;
  // Algorithm 1: equal flat slices of the whole table in order; matrices (experts one by one).
  const double slice = std::ceil(total / n);
  std::vector<double> gather(static_cast<std::size_t>(n), 0.0);
  double offset = 0, muon_elements = 0;
  for (const auto& t : table) {
    const double size = static_cast<double>(muon::numel(t.shape));
    if (t.rule == Rule::muon) {
      const auto rows = t.shape[t.shape.size() - 2], cols = t.shape.back();
      const double matrix = static_cast<double>(rows * cols), cost = muon::distributed::ns_cost(rows, cols, 5);
      for (double at = offset; at < offset + size; at += matrix) {
        const int first = static_cast<int>(at / slice), last = static_cast<int>((at + matrix - 1) / slice);
        d.ns_needed += cost;
        d.ns_algorithm1 += cost * (last - first + 1);
        for (int r = first; r <= last && first != last; ++r) {
          const double own = std::min(at + matrix, (r + 1) * slice) - std::max(at, r * slice);
          gather[static_cast<std::size_t>(r)] += 2.0 * (matrix - own);
        }
      }
      muon_elements += size;
    }
    offset += size;
  }
  d.algorithm1 = adamw_zero1 + *std::max_element(gather.begin(), gather.end());
  d.bucket_gather = adamw_zero1 + 2.0 * f * muon_elements;
  for (const auto& r : plan.ranks) d.ns_ours += r.ns_flops;
  d.ns_bucket_gather = d.ns_needed * n;
  d.ours /= adamw_zero1;
  d.algorithm1 /= adamw_zero1;
  d.bucket_gather /= adamw_zero1;
  return d;
}

void BM_plan_moonlight(benchmark::State& state) {
  const auto table = muon::test::moonlight_16b_table();
  const int world = static_cast<int>(state.range(0));
  muon::distributed::Plan plan;
  for (auto _ : state) benchmark::DoNotOptimize(plan = muon::distributed::plan_zero1(table, world));
  std::int64_t state_total = 0, state_max = 0;
  for (const auto& r : plan.ranks) {
    state_total += r.state_elements();
    state_max = std::max(state_max, r.state_elements());
  }
  const Designs d = compare_designs(table, plan);
  state.counters["ns_max/mean"] = plan.ns_imbalance();
  state.counters["state_max/(1/N)"] = static_cast<double>(state_max) * world / static_cast<double>(state_total);
  state.counters["state_GiB/rank"] = static_cast<double>(state_max) * 4 / (1 << 30);
  state.counters["comm/zero1_adamw"] = d.ours;
  state.counters["alg1_comm/zero1_adamw"] = d.algorithm1;
  state.counters["bucket_gather_comm/zero1_adamw"] = d.bucket_gather;
  state.counters["ns_work/needed"] = d.ns_ours / d.ns_needed;
  state.counters["alg1_ns_work/needed"] = d.ns_algorithm1 / d.ns_needed;
  state.counters["bucket_gather_ns_work/needed"] = d.ns_bucket_gather / d.ns_needed;
}
BENCHMARK(BM_plan_moonlight)->Arg(8)->Arg(16)->Arg(64)->ArgName("N")->Unit(benchmark::kMillisecond)->Iterations(3);

struct Model {
  std::vector<std::vector<float>> values, grads;
  std::vector<muon::Parameter> params;
  Model() {
    std::mt19937 gen(7);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    for (const auto& t : muon::bench::moonlight_table()) {
      const auto n = static_cast<std::size_t>(muon::numel(t.shape));
      values.emplace_back(n);
      grads.emplace_back(n);
      for (float& v : values.back()) v = normal(gen);
      for (float& g : grads.back()) g = normal(gen);
      params.push_back({t.name, t.role, {values.back().data(), t.shape}, {grads.back().data(), t.shape}});
    }
  }
};

// The slowest rank's time is the step's time.
template <class F>
void time_collectively(benchmark::State& state, F&& step) {
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = std::chrono::steady_clock::now();
    step();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    MPI_Allreduce(MPI_IN_PLACE, &seconds, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    state.SetIterationTime(seconds);
  }
}

void BM_zero_step(benchmark::State& state) {
  Model model;
  muon::distributed::ZeroOptimizer<muon::EigenBackend, muon::distributed::MpiCommunicator> opt(model.params, {.lr = 1e-4},
                                                                                 muon::distributed::MpiCommunicator{});
  time_collectively(state, [&] { benchmark::DoNotOptimize(opt.step()); });
  state.counters["ranks"] = opt.communicator().size();
  state.counters["state_MiB/rank"] = static_cast<double>(opt.state_elements()) * 4 / (1 << 20);
}
// Fixed iterations: every rank must run the same number of collective steps.
BENCHMARK(BM_zero_step)->Iterations(40)->Repetitions(3)->ReportAggregatesOnly()->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_single_step(benchmark::State& state) {
  Model model;
  muon::Optimizer<muon::EigenBackend> opt(model.params, {.lr = 1e-4});
  time_collectively(state, [&] { benchmark::DoNotOptimize(opt.step()); });
}
BENCHMARK(BM_single_step)->Iterations(40)->Repetitions(3)->ReportAggregatesOnly()->UseManualTime()->Unit(benchmark::kMillisecond);

// Ranks other than 0 run the same benchmarks silently.
class SilentReporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  muon::distributed::MpiEnvironment mpi(argc, argv);
  benchmark::Initialize(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  SilentReporter silent;
  if (rank == 0) benchmark::RunSpecifiedBenchmarks();
  else benchmark::RunSpecifiedBenchmarks(&silent);
  benchmark::Shutdown();
}
