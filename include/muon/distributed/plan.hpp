// muon/distributed/plan.hpp: who owns what under ZeRO-1, computed from the parameter table alone.
//
// Every Muon matrix has one owner, which alone holds its momentum and runs its Newton–Schulz, so
// no rank repeats another's NS (Moonlight's Algorithm 1 repeats it on every rank that holds a
// slice of a matrix). An expert stack [E, rows, cols] is split by expert. Owners are chosen
// longest-processing-time first on the NS cost, which bounds the slowest rank's NS time by
// (4/3 − 1/(3P)) of the optimum (Graham). AdamW tensors are elementwise, so they are cut into flat
// ranges that even out the ranks' state: Muon costs one float of state per element, AdamW two.
//
// The flat gradient buffer is laid out in buckets (parameters in reverse table order, which is
// the order backward produces them), and inside a bucket rank by rank, so that one
// reduce-scatter per bucket gives each owner exactly the summed gradients of its pieces and one
// all-gather returns the updated values. Blocks are unequal (whole matrices do not divide
// evenly), so the collectives take per-rank counts and nothing is padded.
//
// It allocates nothing of the model's size: bench/bench_zero.cpp plans Moonlight-16B at 64 ranks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "muon/error.hpp"
#include "muon/parameter.hpp"
#include "muon/tensor.hpp"

namespace muon::distributed {

// What the planner needs of a parameter.
struct TensorToShard {
  std::string name;
  Shape shape;
  Rule rule = Rule::muon;
};

struct PlanOptions {
  int ns_steps = 5;
  // A bucket closes once it holds this many elements (over all ranks); 32 Mi fp32 = 128 MiB.
  std::int64_t bucket_elements = std::int64_t{1} << 25;
};

// Newton–Schulz flops of one rows×cols matrix: per step X·Xᵀ (2n²m), the polynomial in the n×n
// Gram (2n³) and its product with X (2n²m), n = min(rows, cols), m = max(rows, cols).
[[nodiscard]] inline double ns_cost(std::int64_t rows, std::int64_t cols, int steps) {
  const auto n = static_cast<double>(std::min(rows, cols)), m = static_cast<double>(std::max(rows, cols));
  return steps * (4.0 * n * n * m + 2.0 * n * n * n);
}

// A contiguous range of one parameter with one owner: a whole Muon matrix (or one expert of a
// stack), or a flat range of an AdamW tensor.
struct Piece {
  std::size_t param = 0;          // index in the table
  std::int64_t offset = 0;        // first element within the parameter
  std::int64_t size = 0;          // elements
  Rule rule = Rule::muon;
  int owner = 0;
  int bucket = 0;
  std::int64_t shard_offset = 0;  // within the owner's block of its bucket
};

struct Bucket {
  std::int64_t offset = 0;                  // of the bucket in the flat buffer
  std::int64_t size = 0;                    // elements, all ranks' blocks together
  std::vector<std::int64_t> counts;         // per rank: the elements it owns in this bucket
  std::vector<std::int64_t> displacements;  // per rank: where its block starts in the bucket
  std::vector<std::size_t> pieces;          // indices into Plan::pieces, by owner, then shard_offset
};

struct RankLoad {
  double ns_flops = 0.0;
  std::int64_t muon_elements = 0;
  std::int64_t adamw_elements = 0;
  // Optimizer-state floats: a momentum per Muon element, two moments per AdamW element.
  [[nodiscard]] std::int64_t state_elements() const { return muon_elements + 2 * adamw_elements; }
  // Bytes one step moves into this rank over a ring, fp32: the reduce-scatter and the all-gather
  // each deliver every element the rank does not own.
  std::int64_t comm_bytes = 0;
};

struct Plan {
  int world = 1;
  std::int64_t total_elements = 0;
  std::vector<Piece> pieces;
  std::vector<Bucket> buckets;
  std::vector<RankLoad> ranks;

  // Slowest rank over the mean, 1 when perfectly balanced (and when there is nothing to balance).
  [[nodiscard]] double ns_imbalance() const {
    return imbalance([](const RankLoad& r) { return r.ns_flops; });
  }
  [[nodiscard]] double state_imbalance() const {
    return imbalance([](const RankLoad& r) { return static_cast<double>(r.state_elements()); });
  }

 private:
  template <class F>
  [[nodiscard]] double imbalance(F f) const {
    double max = 0.0, sum = 0.0;
    for (const RankLoad& r : ranks) {
      max = std::max(max, f(r));
      sum += f(r);
    }
    return sum > 0.0 ? max * static_cast<double>(ranks.size()) / sum : 1.0;
  }
};

namespace detail {

struct MuonUnit {
  std::size_t param;
  std::int64_t offset, size;
  double cost;
};

// Muon units (matrices, experts), costliest first; ties in table order, so plans are deterministic.
inline std::vector<MuonUnit> muon_units(std::span<const TensorToShard> table, int ns_steps) {
  std::vector<MuonUnit> units;
  for (std::size_t i = 0; i < table.size(); ++i) {
    const TensorToShard& t = table[i];
    if (t.rule != Rule::muon) continue;
    if (t.shape.size() < 2 || t.shape.size() > 3)
      throw InvalidArgument("parameter '" + t.name + "' has shape " + to_string(t.shape) +
                            ": Muon takes 2-D matrices or 3-D stacks [E, rows, cols]");
    const std::int64_t rows = t.shape[t.shape.size() - 2], cols = t.shape.back();
    const std::int64_t experts = t.shape.size() == 3 ? t.shape[0] : 1;
    for (std::int64_t e = 0; e < experts; ++e)
      units.push_back({i, e * rows * cols, rows * cols, ns_cost(rows, cols, ns_steps)});
  }
  std::stable_sort(units.begin(), units.end(), [](const MuonUnit& a, const MuonUnit& b) { return a.cost > b.cost; });
  return units;
}

// AdamW elements per rank so that state (muon + 2·adamw) comes out as level as possible: water
// filling from the ranks with the least Muon state.
inline std::vector<std::int64_t> adamw_quota(const std::vector<RankLoad>& ranks, std::int64_t adamw_total) {
  const std::size_t n = ranks.size();
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return ranks[a].muon_elements < ranks[b].muon_elements; });
  // The water level L in state floats: the k lowest ranks are filled to L, with
  // Σ (L − muon_r) = 2·adamw_total over them.
  double level = 0.0;
  double filled = 0.0;
  for (std::size_t k = 0; k < n; ++k) {
    filled += static_cast<double>(ranks[order[k]].muon_elements);
    level = (2.0 * static_cast<double>(adamw_total) + filled) / static_cast<double>(k + 1);
    if (k + 1 == n || level <= static_cast<double>(ranks[order[k + 1]].muon_elements)) break;
  }
  std::vector<std::int64_t> quota(n, 0);
  std::int64_t given = 0;
  for (std::size_t r = 0; r < n; ++r) {
    const double free = level - static_cast<double>(ranks[r].muon_elements);
    quota[r] = free > 0.0 ? static_cast<std::int64_t>(free / 2.0) : 0;
    given += quota[r];
  }
  // Rounding leaves a few elements: hand them out from the least loaded rank on.
  for (std::size_t k = 0; given < adamw_total; k = (k + 1) % n, ++given) ++quota[order[k]];
  return quota;
}

}  // namespace detail

[[nodiscard]] inline Plan plan_zero1(std::span<const TensorToShard> table, int world, const PlanOptions& options = {}) {
  if (world < 1) throw InvalidArgument("plan_zero1: world size must be >= 1, got " + std::to_string(world));
  if (options.ns_steps < 1) throw InvalidArgument("PlanOptions.ns_steps must be >= 1");
  if (options.bucket_elements < 1) throw InvalidArgument("PlanOptions.bucket_elements must be >= 1");
  Plan plan;
  plan.world = world;
  plan.ranks.resize(static_cast<std::size_t>(world));

  // Owners of Muon units: LPT, ties to the rank with fewer elements, then the lower rank.
  for (const detail::MuonUnit& u : detail::muon_units(table, options.ns_steps)) {
    std::size_t best = 0;
    for (std::size_t r = 1; r < plan.ranks.size(); ++r) {
      const RankLoad &a = plan.ranks[r], &b = plan.ranks[best];
      if (a.ns_flops < b.ns_flops || (a.ns_flops == b.ns_flops && a.muon_elements < b.muon_elements)) best = r;
    }
    plan.ranks[best].ns_flops += u.cost;
    plan.ranks[best].muon_elements += u.size;
    plan.pieces.push_back({u.param, u.offset, u.size, Rule::muon, static_cast<int>(best), 0, 0});
  }

  // AdamW tensors, in table order, cut into flat ranges that fill each rank's quota in turn.
  std::int64_t adamw_total = 0;
  for (const TensorToShard& t : table)
    if (t.rule == Rule::adamw) adamw_total += numel(t.shape);
  std::vector<std::int64_t> quota = detail::adamw_quota(plan.ranks, adamw_total);
  std::size_t rank = 0;
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (table[i].rule != Rule::adamw) continue;
    const std::int64_t size = numel(table[i].shape);
    for (std::int64_t offset = 0; offset < size;) {
      while (quota[rank] == 0) ++rank;
      const std::int64_t take = std::min(quota[rank], size - offset);
      plan.pieces.push_back({i, offset, take, Rule::adamw, static_cast<int>(rank), 0, 0});
      plan.ranks[rank].adamw_elements += take;
      quota[rank] -= take;
      offset += take;
    }
  }

  // Buckets over parameters in reverse table order.
  std::vector<int> bucket_of(table.size(), 0);
  std::int64_t in_bucket = 0;
  int bucket = 0;
  for (std::size_t k = table.size(); k-- > 0;) {
    if (in_bucket >= options.bucket_elements) {
      ++bucket;
      in_bucket = 0;
    }
    bucket_of[k] = bucket;
    in_bucket += numel(table[k].shape);
    plan.total_elements += numel(table[k].shape);
  }
  plan.buckets.resize(table.empty() ? 0 : static_cast<std::size_t>(bucket) + 1);
  for (Bucket& b : plan.buckets) b.counts.assign(static_cast<std::size_t>(world), 0);

  // Inside a bucket: by owner, then in table order (reversed, like the buckets), then by offset.
  std::vector<std::size_t> order(plan.pieces.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const Piece &p = plan.pieces[a], &q = plan.pieces[b];
    if (p.owner != q.owner) return p.owner < q.owner;
    if (p.param != q.param) return p.param > q.param;
    return p.offset < q.offset;
  });
  for (const std::size_t k : order) {
    Piece& p = plan.pieces[k];
    p.bucket = bucket_of[p.param];
    Bucket& b = plan.buckets[static_cast<std::size_t>(p.bucket)];
    p.shard_offset = b.counts[static_cast<std::size_t>(p.owner)];
    b.counts[static_cast<std::size_t>(p.owner)] += p.size;
    b.pieces.push_back(k);
  }
  std::int64_t offset = 0;
  for (Bucket& b : plan.buckets) {
    b.offset = offset;
    b.displacements.resize(b.counts.size());
    std::exclusive_scan(b.counts.begin(), b.counts.end(), b.displacements.begin(), std::int64_t{0});
    b.size = std::accumulate(b.counts.begin(), b.counts.end(), std::int64_t{0});
    offset += b.size;
  }
  for (RankLoad& r : plan.ranks)
    r.comm_bytes = 2 * 4 * (plan.total_elements - r.muon_elements - r.adamw_elements);
  return plan;
}

}  // namespace muon::distributed
