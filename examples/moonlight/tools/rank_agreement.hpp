// What the ranks of `mpirun ... moonlight train` must agree on before the first collective, and
// the exchange that checks it (train_command.cpp calls it once, before the trainer exists).
//
// Each rank sums up its run in one JSON object (run_facts): --resume and the step resumed, the
// run config after the flags (model, training, muon), and the corpus fingerprint. Rank 0
// broadcasts its dump; every other rank compares field by field; the lowest rank that differs
// broadcasts a message naming the first differing field with both values, and every rank throws
// it as RanksDisagree. So no rank trains alone while the others wait, nor trains silently on
// another seed, batch shape or corpus:
//
//   moonlight: ranks disagree on training.seed: rank 0 has 1, rank 1 has 2; pass the same --config
//   and flags to every rank
//
// Left out: --out (rank 0 alone writes the run; per-node copies for a resume may have other
// paths), --sample-prompt and --sample-tokens (rank 0 alone samples).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "muon/distributed/communicator.hpp"

namespace moonlight::cli {

// The ranks were started with different runs. Thrown on every rank alike, at the same point, so
// every rank can end normally.
class RanksDisagree : public muon::distributed::CommError {
 public:
  using CommError::CommError;
};

// What every rank must hold alike, in the order a disagreement is looked for (so --resume is
// named before the step it implies, and training.seq_len before the corpus packed with it).
// `run` is to_json(RunConfig); `resumed_step` is null for a new run.
[[nodiscard]] inline nlohmann::ordered_json run_facts(bool resume, const nlohmann::json& resumed_step,
                                                      const nlohmann::json& run, const nlohmann::json& corpus) {
  nlohmann::ordered_json facts;
  facts["resume"] = resume;
  facts["resumed_step"] = resumed_step;
  for (const char* section : {"model", "training", "muon"}) facts[section] = run.value(section, nlohmann::json::object());
  facts["corpus"] = corpus;
  return facts;
}

namespace detail {

struct FactDifference {
  std::string path;
  std::string root_value, own_value;  // dumps; "nothing" where the field is absent
};

// The first leaf (in `root`'s order, then this rank's extra fields) whose value differs.
inline std::optional<FactDifference> first_difference(const nlohmann::ordered_json& root, const nlohmann::ordered_json& own,
                                                      const std::string& path) {
  const auto shown = [](const nlohmann::ordered_json* v) { return v != nullptr ? v->dump() : std::string("nothing"); };
  if (!root.is_object() || !own.is_object()) {
    if (root == own) return std::nullopt;
    return FactDifference{path, root.dump(), own.dump()};
  }
  const auto at = [&](const std::string& key) { return path.empty() ? key : path + "." + key; };
  for (const auto& [key, value] : root.items()) {
    if (!own.contains(key)) return FactDifference{at(key), value.dump(), shown(nullptr)};
    if (auto d = first_difference(value, own.at(key), at(key))) return d;
  }
  for (const auto& [key, value] : own.items())
    if (!root.contains(key)) return FactDifference{at(key), shown(nullptr), value.dump()};
  return std::nullopt;
}

inline std::string disagreement_hint(std::string_view path) {
  if (path.starts_with("resume")) return "pass --resume to every rank or to none, with the same --out";
  if (path.starts_with("corpus")) return "give every rank the same --data files, --doc-separator and --tokenizer";
  return "pass the same --config and flags to every rank";
}

}  // namespace detail

// The message rank `rank` reports when its facts differ from rank 0's; nothing when they agree.
[[nodiscard]] inline std::optional<std::string> describe_disagreement(const nlohmann::ordered_json& rank0,
                                                                      const nlohmann::ordered_json& own, int rank) {
  const auto d = detail::first_difference(rank0, own, "");
  if (!d) return std::nullopt;
  return "ranks disagree on " + d->path + ": rank 0 has " + d->root_value + ", rank " + std::to_string(rank) + " has " +
         d->own_value + "; " + detail::disagreement_hint(d->path);
}

// Collective: returns on every rank when all ranks hold the same facts, else throws the same
// RanksDisagree on every rank (the lowest differing rank's message). Four small collectives.
template <muon::distributed::Communicator C>
void agree_on_run(C& comm, const nlohmann::ordered_json& facts) {
  if (comm.size() == 1) return;
  const auto broadcast_string = [&](std::string& text, int root) {
    std::int64_t length[] = {static_cast<std::int64_t>(text.size())};
    comm.broadcast(std::span<std::int64_t>(length), root);
    text.resize(static_cast<std::size_t>(length[0]));
    comm.broadcast(std::as_writable_bytes(std::span<char>(text)), root);
  };
  std::string root_dump = comm.rank() == 0 ? facts.dump() : std::string();
  broadcast_string(root_dump, 0);
  std::optional<std::string> message;
  if (comm.rank() != 0) message = describe_disagreement(nlohmann::ordered_json::parse(root_dump), facts, comm.rank());
  std::int64_t first[] = {message ? comm.rank() : comm.size()};
  comm.all_reduce(std::span<std::int64_t>(first), muon::distributed::ReduceOp::min);
  if (first[0] == comm.size()) return;
  std::string text = message.value_or(std::string());
  broadcast_string(text, static_cast<int>(first[0]));
  throw RanksDisagree(text);
}

}  // namespace moonlight::cli
