// muon/distributed/zero1.hpp: the optimizer, sharded ZeRO-1 style over data-parallel ranks.
//
// Every rank holds the whole model and computes gradients on its own micro-batch. One step:
//
//   pack gradients into the plan's flat layout (plan.hpp)
//   → reduce-scatter (avg), per bucket: each owner receives exactly its pieces' mean gradients
//   → guard and clip on the global norm: each rank sums squares over what it owns, one all-reduce
//   → each owner runs momentum → Newton–Schulz → update (or AdamW) on its pieces only, bucket by
//     bucket, and starts the bucket's all-gather as soon as its pieces are done, so that the
//     gather of one bucket overlaps the next bucket's Newton–Schulz
//   → every rank copies the other owners' updated values into its model.
//
// A rank holds state only for what it owns, so the state per rank is 1/N of the single-process
// optimizer's. One StepDriver decides each step (guard, clip, schedule, the one step counter) and
// copies its numbers to the backend once; the owners' work is a Stepper per bucket over that
// rank's pieces (muon/stepper.hpp), as in the single-process optimizer: the rules exist once. Results depend on the world size only
// through the order in which the engine sums gradients and the ranks sum the clipping norm
// (tests/test_zero_mpi.cpp: bit for bit where those sums are exact).
//
// Every public operation is collective: all ranks call it, in the same order. Bad input (a table,
// options or a file that is wrong on any rank) is agreed: it throws on every rank, changes
// nothing, and leaves no rank waiting. A failure of the engine or the device inside a step (a
// CommError or a backend error after the guard) is not recoverable: replicas may differ.
//
//   muon::distributed::MpiEnvironment mpi(argc, argv);
//   muon::distributed::ZeroOptimizer<muon::EigenBackend, muon::distributed::MpiCommunicator> opt(
//       params, muon::Options{.lr = 4.2e-4}, muon::distributed::MpiCommunicator{});
//   for (...) { model.backward(local_batch); opt.step(); }
//   opt.save("opt.safetensors");   // one file, the single-process format: loads at any world size
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "muon/backend.hpp"
#include "muon/distributed/communicator.hpp"
#include "muon/distributed/plan.hpp"
#include "muon/error.hpp"
#include "muon/parameter.hpp"
#include "muon/state.hpp"
#include "muon/state_file.hpp"
#include "muon/step_driver.hpp"
#include "muon/stepper.hpp"

namespace muon::distributed {

struct ZeroOptions {
  // Elements per communication bucket (over all ranks); smaller buckets overlap more, larger
  // ones batch more Newton–Schulz per call.
  std::int64_t bucket_elements = PlanOptions{}.bucket_elements;
};
}  // namespace muon::distributed
template <>
struct muon::Schema<muon::distributed::ZeroOptions> {
  static constexpr auto fields =
      std::tuple{field("bucket_elements", &muon::distributed::ZeroOptions::bucket_elements, Limits{.min = 1})};
};
namespace muon::distributed {

template <Backend B, Communicator C>
class ZeroOptimizer {
 public:
  using Buffer = typename B::Buffer;

  ZeroOptimizer(std::vector<Parameter> params, Options options, C comm, B backend = {}, ZeroOptions zero = {})
      : comm_(std::move(comm)), backend_(std::move(backend)), params_(std::move(params)) {
    agree([&] {
      driver_.emplace(backend_, options);
      validate_table(params_);
      validate_fields(zero, "ZeroOptions");
      check_same_stream();
    });
    check_ranks_agree(zero);
    agree([&] {
      std::vector<TensorToShard> infos;
      for (const Parameter& p : params_) infos.push_back({p.name, p.value.shape, route(p)});
      plan_ = plan_zero1(infos, comm_.size(), {driver_->options().muon.ns.steps, zero.bucket_elements});
      build_shards();
    });
  }
  // The owners' tables point into this object's shards.
  ZeroOptimizer(const ZeroOptimizer&) = delete;
  ZeroOptimizer& operator=(const ZeroOptimizer&) = delete;
  ZeroOptimizer(ZeroOptimizer&&) noexcept = default;
  ZeroOptimizer& operator=(ZeroOptimizer&&) noexcept = default;

  // One collective step; see the file comment. A NaN or Inf in any rank's gradient rejects (or
  // skips) the step on every rank, naming the same parameter, and changes nothing.
  StepReport step() {
    pack_gradients();
    {
      std::vector<typename C::Request> pending;
      for (std::size_t b = 0; b < plan_.buckets.size(); ++b) {
        const Bucket& bucket = plan_.buckets[b];
        pending.push_back(comm_.reduce_scatter(bucket_span(b), shard(b), bucket.counts, ReduceOp::avg));
      }
      for (auto& r : pending) r.wait();
    }
    const GradientCheck check = check_owned_gradients();

    const StepReport report =
        driver_->begin_step(check, ", on every rank (the NaN or Inf may be in any rank's gradient)");
    if (report.skipped) return report;

    driver_->upload();
    std::vector<typename C::Request> gathers;
    for (std::size_t b = 0; b < plan_.buckets.size(); ++b) {
      if (owners_[b]) {
        owners_[b]->apply(driver_->values());
        pack_owned_values(b);
      }
      const Bucket& bucket = plan_.buckets[b];
      const auto own = static_cast<std::size_t>(comm_.rank());
      const auto flat = bucket_span(b);
      gathers.push_back(comm_.all_gather(
          flat.subspan(static_cast<std::size_t>(bucket.displacements[own]), static_cast<std::size_t>(bucket.counts[own])),
          flat, bucket.counts));
    }
    for (auto& r : gathers) r.wait();
    unpack_values();
    return report;
  }

  [[nodiscard]] std::int64_t step_count() const { return driver_->step_count(); }
  [[nodiscard]] std::int64_t skipped_steps() const { return driver_->skipped_steps(); }
  [[nodiscard]] const Options& options() const { return driver_->options(); }
  // Collective. New hyper-parameters from the next step on (a resumed run with a longer schedule,
  // say); the state is kept. Options that are invalid, or differ between ranks, throw on every
  // rank and change nothing. (The plan was balanced for the old Newton–Schulz step count.)
  void set_options(Options options) {
    agree([&] {
      validate(options);
      check_state_layout(driver_->options().muon, options.muon);
    });
    if (const auto field = first_differing_field(field_fingerprints(options, "Options")))
      throw InvalidArgument("set_options: " + *field + " differs between ranks; pass the same Options on every rank");
    for (auto& o : owners_)
      if (o) o->set_rule_options(options.muon, options.adamw);
    driver_->set_options(std::move(options));
  }
  [[nodiscard]] const Plan& plan() const { return plan_; }
  [[nodiscard]] const std::vector<Parameter>& parameters() const { return params_; }
  [[nodiscard]] C& communicator() { return comm_; }
  // The backend the parameters' memory belongs to: for work on the weights between steps.
  [[nodiscard]] B& backend() { return backend_; }

  // Optimizer-state floats this rank holds (momenta and moments of its pieces), as allocated.
  [[nodiscard]] std::int64_t state_elements() {
    std::int64_t n = 0;
    for (auto& o : owners_)
      if (o) n += o->state_elements();
    return n;
  }

  // Collective. Writes the whole state as one file in the single-process optimizer's format
  // (state_file.hpp), keyed by parameter name: it loads at any world size, and into
  // muon::Optimizer. Rank 0 writes it atomically; every rank gathers one parameter at a time.
  void save(const std::filesystem::path& path) {
    std::map<std::string, std::vector<float>> owned;
    for (auto& o : owners_)
      if (o)
        for (StateTensor& t : o->export_tensors()) owned[t.name] = std::move(t.values);
    SavedState state{step_count(), skipped_steps(), options(), {}};
    for (std::size_t i = 0; i < params_.size(); ++i)
      for (const char* kind : state_kinds(i)) {
        std::vector<float> full = gather_state(i, kind, owned);
        if (comm_.rank() == 0)
          state.tensors.push_back({params_[i].name + "/" + kind, state_shape(kind, params_[i].value.shape), std::move(full)});
      }
    agree([&] {
      if (comm_.rank() == 0) write_state_file(path, state);
    });
  }

  // Collective. Reads a file written by `save` here or by muon::save_state, at any world
  // size. Every rank reads it (a shared file system, or a copy per node); everything is checked
  // on every rank before anything changes.
  void load(const std::filesystem::path& path) {
    SavedState state;
    std::vector<std::vector<StateTensor>> pieces(owners_.size());
    std::vector<typename Stepper<B>::Staged> staged(owners_.size());
    agree([&] {
      state = read_state_file(path);
      validate(state.options);
      check_step_counts(state.step, state.skipped_steps, path.string());
      std::map<std::string, const StateTensor*> by_name;
      for (const StateTensor& t : state.tensors) by_name[t.name] = &t;
      std::set<std::string> expected;
      for (std::size_t i = 0; i < params_.size(); ++i)
        for (const char* kind : state_kinds(i)) expected.insert(params_[i].name + "/" + kind);
      const std::string normuon = options().muon.normuon.enabled ? "on" : "off";
      for (const StateTensor& t : state.tensors)
        if (!expected.contains(t.name))
          throw StateMismatch("optimizer state '" + path.string() + "': tensor '" + t.name +
                              "' matches no parameter of this optimizer" +
                              (t.name.ends_with(std::string("/") + kNorMuonV) ? " (NorMuon is " + normuon + " here)" : ""));
      for (std::size_t b = 0; b < owners_.size(); ++b) {
        if (!owners_[b]) continue;
        std::vector<StateTensor>& s = pieces[b];
        for (const std::size_t k : owned_pieces_[b]) {
          const Piece& piece = plan_.pieces[k];
          const Parameter& p = params_[piece.param];
          for (const char* kind : state_kinds(piece.param)) {
            const std::string name = p.name + "/" + kind;
            const Shape shape = state_shape(kind, p.value.shape);
            const auto it = by_name.find(name);
            if (it == by_name.end())
              throw StateMismatch("optimizer state '" + path.string() + "': tensor '" + name + "' is missing (parameter '" +
                                  p.name + "' has no saved " + kind + ")");
            if (it->second->shape != shape || std::ssize(it->second->values) != numel(shape))
              throw StateMismatch("optimizer state '" + path.string() + "': tensor '" + name + "' has shape " +
                                  to_string(it->second->shape) + ", the parameter" +
                                  (shape == p.value.shape ? "" : "'s " + std::string(kind)) + " has " + to_string(shape));
            const std::int64_t stride = state_stride(kind, p.value.shape);
            const auto first = it->second->values.begin() + piece.offset / stride;
            s.push_back({piece_name(piece) + "/" + kind, state_shape(kind, piece_shape(piece)),
                         {first, first + piece.size / stride}});
          }
        }
        staged[b] = owners_[b]->check_tensors(s, path.string());
      }
      try {
        check_state_layout(options().muon, state.options.muon);
      } catch (const InvalidArgument& e) {
        throw StateMismatch("optimizer state '" + path.string() + "': " + e.what());
      }
    });
    // A copy per node must be the same file: the step counts and options must agree.
    const std::int64_t read[] = {state.step, state.skipped_steps};
    std::optional<std::string> differs;
    if (first_difference(read)) differs = "the step counts";
    if (const auto field = first_differing_field(field_fingerprints(state.options, "Options"))) differs = *field;
    if (differs)
      throw StateMismatch("optimizer state '" + path.string() + "': the ranks read different " + *differs +
                          "; every rank must read the same file");
    for (std::size_t b = 0; b < owners_.size(); ++b)
      if (owners_[b]) {
        owners_[b]->import_tensors(staged[b]);
        owners_[b]->set_rule_options(state.options.muon, state.options.adamw);
      }
    driver_->restore(state.step, state.skipped_steps, state.options);
  }

 private:
  // Runs f on this rank. If it throws here or on any other rank, every rank throws: the rank(s)
  // that failed their own error, the others a CommError quoting the lowest failing rank.
  template <class F>
  void agree(F&& f) {
    std::exception_ptr error;
    std::string message;
    try {
      f();
    } catch (const std::exception& e) {
      error = std::current_exception();
      message = e.what();
    } catch (...) {
      error = std::current_exception();
      message = "an exception that is not a std::exception";
    }
    std::int64_t failed[] = {error ? comm_.rank() : comm_.size()};
    comm_.all_reduce(std::span<std::int64_t>(failed), ReduceOp::min);
    if (failed[0] == comm_.size()) return;
    std::int64_t length[] = {static_cast<std::int64_t>(message.size())};
    const int root = static_cast<int>(failed[0]);
    comm_.broadcast(std::span<std::int64_t>(length), root);
    message.resize(static_cast<std::size_t>(length[0]));
    comm_.broadcast(std::as_writable_bytes(std::span<char>(message)), root);
    if (error) std::rethrow_exception(error);
    throw CommError("rank " + std::to_string(root) + " failed: " + message);
  }

  // FNV-1a: a stable hash of what every rank must agree on.
  static std::int64_t hash(std::string_view bytes, std::uint64_t h = 14695981039346656037ull) {
    for (const char c : bytes) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return std::bit_cast<std::int64_t>(h);
  }
  std::int64_t hash_parameter(const Parameter& p) const {
    std::string key = p.name + '|' + to_string(p.value.shape) + '|' + (route(p) == Rule::muon ? "muon" : "adamw");
    return hash(key);
  }

  // With a stream-ordered engine (NCCL), the backend must work on the communicator's compute
  // stream: that is the stream the engine's events order against (nccl.hpp).
  void check_same_stream() {
    if constexpr (requires { comm_.stream() == backend_.stream(); })
      if (comm_.stream() != backend_.stream())
        throw InvalidArgument("the backend and the communicator work on different streams; construct the "
                              "communicator with the backend's stream()");
  }

  // The ranks must hold the same table (names, shapes, rules, order), options and bucket size.
  void check_ranks_agree(const ZeroOptions& zero) {
    std::int64_t table = hash("table");
    for (const Parameter& p : params_) table = hash(std::to_string(hash_parameter(p)), std::bit_cast<std::uint64_t>(table));
    const std::string where = " (this is rank " + std::to_string(comm_.rank()) + " of " + std::to_string(comm_.size()) +
                              "); every rank must build the same parameter table, in the same order, with the same options";
    auto fingerprints = field_fingerprints(options(), "Options");
    for (auto& f : field_fingerprints(zero, "ZeroOptions")) fingerprints.push_back(std::move(f));
    if (const auto field = first_differing_field(fingerprints)) throw InvalidArgument(*field + " differs between ranks" + where);
    const std::int64_t mine[] = {static_cast<std::int64_t>(params_.size()), table};
    const auto differs = first_difference(mine);
    if (!differs) return;
    if (*differs == 0)
      throw InvalidArgument("parameter tables differ between ranks in length: this rank has " +
                            std::to_string(params_.size()) + " parameters" + where);
    std::vector<std::int64_t> each;
    for (const Parameter& p : params_) each.push_back(hash_parameter(p));
    const std::size_t i = first_difference(each).value_or(0);
    const Parameter& p = params_[i];
    throw InvalidArgument("parameter tables differ between ranks at entry " + std::to_string(i) + ": here it is '" +
                          p.name + "' with shape " + to_string(p.value.shape) + ", rule " +
                          (route(p) == Rule::muon ? "muon" : "adamw") + where);
  }

  // The path of the first field whose value differs between the ranks.
  std::optional<std::string> first_differing_field(const std::vector<FieldFingerprint>& fields) {
    std::vector<std::int64_t> hashes;
    for (const FieldFingerprint& f : fields) hashes.push_back(f.hash);
    const auto i = first_difference(hashes);
    if (!i) return std::nullopt;
    return fields[*i].path;
  }

  // The first position at which the ranks' values differ (every rank passes as many).
  std::optional<std::size_t> first_difference(std::span<const std::int64_t> mine) {
    std::vector<std::int64_t> lo(mine.begin(), mine.end()), hi = lo;
    comm_.all_reduce(std::span<std::int64_t>(lo), ReduceOp::min);
    comm_.all_reduce(std::span<std::int64_t>(hi), ReduceOp::max);
    for (std::size_t i = 0; i < lo.size(); ++i)
      if (lo[i] != hi[i]) return i;
    return std::nullopt;
  }


  std::vector<const char*> state_kinds(std::size_t param) const {
    return state_buffer_names(route(params_[param]), options().muon);
  }

  // The name of a piece in its owner's optimizer: the parameter's, with the expert or the flat range.
  std::string piece_name(const Piece& piece) const {
    const Parameter& p = params_[piece.param];
    if (piece.size == p.value.size()) return p.name;
    if (piece.rule == Rule::muon) return p.name + "[" + std::to_string(piece.offset / piece.size) + "]";
    return p.name + "[" + std::to_string(piece.offset) + ":" + std::to_string(piece.offset + piece.size) + "]";
  }
  Shape piece_shape(const Piece& piece) const {
    const Shape& s = params_[piece.param].value.shape;
    if (piece.rule == Rule::muon) return {s[s.size() - 2], s.back()};
    return piece.size == numel(s) ? s : Shape{piece.size};
  }

  // The flat buffer, one bucket's stretch of it, and one rank's shard per bucket; and for each
  // bucket with pieces here, an optimizer over them whose gradients live in the shard.
  void build_shards() {
    const auto own = static_cast<std::size_t>(comm_.rank());
    flat_ = backend_.allocate(std::max<std::int64_t>(plan_.total_elements, 1));
    owned_pieces_.resize(plan_.buckets.size());
    // The owners' tables point into the shards: no reallocation may move them.
    shards_.reserve(plan_.buckets.size());
    owners_.reserve(plan_.buckets.size());
    for (std::size_t b = 0; b < plan_.buckets.size(); ++b) {
      const Bucket& bucket = plan_.buckets[b];
      shards_.push_back(backend_.allocate(std::max<std::int64_t>(bucket.counts[own], 1)));
      std::vector<Parameter> pieces;
      for (const std::size_t k : bucket.pieces) {
        const Piece& piece = plan_.pieces[k];
        if (piece.owner != comm_.rank()) continue;
        owned_pieces_[b].push_back(k);
        const Parameter& p = params_[piece.param];
        const Shape shape = piece_shape(piece);
        pieces.push_back({piece_name(piece), p.role, {p.value.data + piece.offset, shape},
                          {shards_[b].span().data() + piece.shard_offset, shape}, piece.rule});
      }
      owners_.emplace_back();
      if (!pieces.empty()) owners_.back().emplace(backend_, std::move(pieces), options().muon, options().adamw);
    }
  }

  std::span<float> bucket_span(std::size_t b) {
    const Bucket& bucket = plan_.buckets[b];
    return flat_.span().subspan(static_cast<std::size_t>(bucket.offset), static_cast<std::size_t>(bucket.size));
  }
  // This rank's block of bucket b's gradients (the buffer holds at least one float).
  std::span<float> shard(std::size_t b) {
    return shards_[b].span().first(
        static_cast<std::size_t>(plan_.buckets[b].counts[static_cast<std::size_t>(comm_.rank())]));
  }
  std::span<float> slot(std::size_t b, const Piece& piece) {
    const Bucket& bucket = plan_.buckets[b];
    return bucket_span(b).subspan(
        static_cast<std::size_t>(bucket.displacements[static_cast<std::size_t>(piece.owner)] + piece.shard_offset),
        static_cast<std::size_t>(piece.size));
  }
  template <class T>
  static std::span<T> range(const TensorRef<T>& t, const Piece& piece) {
    return t.span().subspan(static_cast<std::size_t>(piece.offset), static_cast<std::size_t>(piece.size));
  }

  using Copies = std::vector<std::pair<std::span<const float>, std::span<float>>>;

  // A device backend copies many pieces per launch; else one call per piece.
  void copy_all(const Copies& copies) {
    if constexpr (requires { backend_.copy_each(std::span<const typename Copies::value_type>(copies)); }) {
      backend_.copy_each(copies);
    } else {
      for (const auto& copy : copies) backend_.axpby(1.0f, copy.first, 0.0f, copy.second);
    }
  }
  void pack_gradients() {
    Copies copies;
    for (std::size_t b = 0; b < plan_.buckets.size(); ++b)
      for (const std::size_t k : plan_.buckets[b].pieces) {
        const Piece& piece = plan_.pieces[k];
        copies.emplace_back(range(params_[piece.param].grad, piece), slot(b, piece));
      }
    copy_all(copies);
  }
  void pack_owned_values(std::size_t b) {
    Copies copies;
    for (const std::size_t k : owned_pieces_[b]) {
      const Piece& piece = plan_.pieces[k];
      copies.emplace_back(range(params_[piece.param].value, piece), slot(b, piece));
    }
    copy_all(copies);
  }
  void unpack_values() {
    Copies copies;
    for (std::size_t b = 0; b < plan_.buckets.size(); ++b)
      for (const std::size_t k : plan_.buckets[b].pieces) {
        const Piece& piece = plan_.pieces[k];
        if (piece.owner != comm_.rank()) copies.emplace_back(slot(b, piece), range(params_[piece.param].value, piece));
      }
    copy_all(copies);
  }

  // The global squared norm (each element counted once, by its owner) and the first parameter,
  // in table order, whose mean gradient is not finite on any rank. Every rank gives one sum per
  // piece of the plan, 0 for another owner's (an empty span), and one all-reduce (sum) brings
  // every piece's sum to every rank, bit for bit the same (adding zeros is exact); a NaN or Inf
  // stays one. On a device engine that is the step's one host synchronisation.
  GradientCheck check_owned_gradients() {
    std::vector<std::span<const float>> pieces(plan_.pieces.size());
    for (std::size_t b = 0; b < owned_pieces_.size(); ++b)
      for (const std::size_t k : owned_pieces_[b]) {
        const Piece& piece = plan_.pieces[k];
        pieces[k] = shard(b).subspan(static_cast<std::size_t>(piece.shard_offset), static_cast<std::size_t>(piece.size));
      }
    std::vector<double> sums(pieces.size());
    comm_.reduce_to_host(std::span<double>(sums), ReduceOp::sum, [&](std::span<double> into) {
      if constexpr (requires { backend_.sum_squares_each(std::span<const std::span<const float>>(pieces), into); }) {
        backend_.sum_squares_each(std::span<const std::span<const float>>(pieces), into);
      } else {
        for (std::size_t k = 0; k < pieces.size(); ++k) into[k] = backend_.sum_squares(pieces[k]);
      }
    });
    GradientCheck check;
    std::size_t first_bad = params_.size();
    for (std::size_t k = 0; k < sums.size(); ++k) {
      if (std::isfinite(sums[k])) check.sum_squares += sums[k];
      else first_bad = std::min(first_bad, plan_.pieces[k].param);
    }
    if (first_bad < params_.size()) check.non_finite = params_[first_bad].name;
    return check;
  }

  // One state tensor of one parameter, assembled from its owners' pieces on every rank.
  std::vector<float> gather_state(std::size_t param, const char* kind, const std::map<std::string, std::vector<float>>& owned) {
    const auto world = static_cast<std::size_t>(comm_.size());
    std::vector<std::vector<const Piece*>> by_rank(world);
    for (const Piece& piece : plan_.pieces)
      if (piece.param == param) by_rank[static_cast<std::size_t>(piece.owner)].push_back(&piece);
    // A per-row buffer (normuon_v) holds 1/stride of each piece's elements.
    const std::int64_t stride = state_stride(kind, params_[param].value.shape);
    std::vector<std::int64_t> counts(world, 0);
    for (std::size_t r = 0; r < world; ++r) {
      std::sort(by_rank[r].begin(), by_rank[r].end(), [](const Piece* a, const Piece* b) { return a->offset < b->offset; });
      for (const Piece* piece : by_rank[r]) counts[r] += piece->size / stride;
    }
    const std::int64_t total = params_[param].value.size() / stride;
    std::vector<float> mine;
    for (const Piece* piece : by_rank[static_cast<std::size_t>(comm_.rank())]) {
      const std::vector<float>& values = owned.at(piece_name(*piece) + "/" + kind);
      mine.insert(mine.end(), values.begin(), values.end());
    }
    // Through the backend's memory, which is the communicator's.
    Buffer send = backend_.allocate(std::max<std::int64_t>(std::ssize(mine), 1));
    Buffer recv = backend_.allocate(total);
    const auto send_span = send.span().first(mine.size());
    backend_.from_host(mine, send_span);
    comm_.all_gather(send_span, recv.span(), counts).wait();
    std::vector<float> gathered(static_cast<std::size_t>(total)), full(static_cast<std::size_t>(total));
    backend_.to_host(recv.span(), gathered);
    std::int64_t at = 0;
    for (const auto& pieces : by_rank)
      for (const Piece* piece : pieces) {
        std::copy_n(gathered.begin() + at, piece->size / stride, full.begin() + piece->offset / stride);
        at += piece->size / stride;
      }
    return full;
  }

  C comm_;
  B backend_;
  std::vector<Parameter> params_;
  std::optional<StepDriver<B>> driver_;  // made inside the constructor's first agreement
  Plan plan_;
  Buffer flat_;
  std::vector<Buffer> shards_;
  std::vector<std::vector<std::size_t>> owned_pieces_;  // per bucket: this rank's pieces
  std::vector<std::optional<Stepper<B>>> owners_;      // per bucket: the stepper over them
};

}  // namespace muon::distributed
