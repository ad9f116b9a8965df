// muon/parameter.hpp: the parameter table the optimizer works on, and Moonlight's routing policy.
//
// Each entry names a tensor, says what it is (its Role) and where its value and gradient live.
// Routing goes by that explicit role, never by shape alone: Moonlight's policy sends hidden
// matrices (Role::matrix, 2-D, or 3-D expert stacks [E, rows, cols]) to Muon and everything else
// (embeddings, the LM head, norm gains, biases, router biases) to AdamW. `rule` overrides it.
//
//   std::vector<muon::Parameter> params{
//       {"model.embed_tokens.weight", muon::Role::embedding, {emb.data(), {V, D}}, {demb.data(), {V, D}}},
//       {"model.layers.0.mlp.up_proj.weight", muon::Role::matrix, {w.data(), {F, D}}, {dw.data(), {F, D}}}};
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <span>
#include <string>

#include "muon/error.hpp"
#include "muon/tensor.hpp"

namespace muon {

enum class Role { matrix, embedding, head, norm, bias };

enum class Rule { muon, adamw };

struct Parameter {
  std::string name;
  Role role = Role::matrix;
  TensorRef<float> value;
  TensorRef<const float> grad;
  std::optional<Rule> rule{};  // overrides the routing policy
};

// Moonlight's policy (docs/algorithms.md §7); throws for a Muon parameter Muon cannot take.
[[nodiscard]] inline Rule route(const Parameter& p) {
  const Rule rule = p.rule.value_or(p.role == Role::matrix ? Rule::muon : Rule::adamw);
  const std::size_t ndim = p.value.shape.size();
  if (rule == Rule::muon && (ndim < 2 || ndim > 3))
    throw InvalidArgument("parameter '" + p.name + "' has shape " + to_string(p.value.shape) +
                          ": Muon takes 2-D matrices or 3-D stacks [E, rows, cols]; give it Role::norm "
                          "or Role::bias (AdamW), or reshape it to 2-D");
  return rule;
}

// The gradient must be bound and have the value's shape.
inline void check_gradient(const Parameter& p) {
  if (p.grad.data == nullptr) throw InvalidArgument("parameter '" + p.name + "' has no gradient pointer");
  if (p.grad.shape != p.value.shape)
    throw ShapeMismatch("gradient of parameter '" + p.name + "' has shape " + to_string(p.grad.shape) +
                        ", the parameter has " + to_string(p.value.shape));
}

// A table an optimizer can take: non-empty, unique non-empty names, positive dimensions, bound
// values and gradients of matching shapes, element counts (each and in all) within int64, and a
// rule each parameter can follow.
inline void validate_table(std::span<const Parameter> params) {
  if (params.empty()) throw InvalidArgument("the parameter table is empty: give the optimizer at least one parameter");
  std::set<std::string> seen;
  std::int64_t total = 0;
  for (const Parameter& p : params) {
    if (p.name.empty()) throw InvalidArgument("a parameter has an empty name; every parameter needs a unique name");
    if (!seen.insert(p.name).second) throw InvalidArgument("parameter name '" + p.name + "' appears twice");
    for (const std::int64_t d : p.value.shape)
      if (d <= 0)
        throw InvalidArgument("parameter '" + p.name + "' has shape " + to_string(p.value.shape) +
                              "; every dimension must be positive");
    // The steppers divide by rows × cols and sum element counts: both must fit int64.
    const std::optional<std::int64_t> n = checked_numel(p.value.shape);
    if (!n || total > std::numeric_limits<std::int64_t>::max() - *n)
      throw InvalidArgument("parameter '" + p.name + "' has shape " + to_string(p.value.shape) +
                            (n ? "; the table's element count exceeds 2^63 - 1" : "; its element count exceeds 2^63 - 1"));
    total += *n;
    if (p.value.data == nullptr) throw InvalidArgument("parameter '" + p.name + "' has no value pointer");
    check_gradient(p);
    (void)route(p);
  }
}

}  // namespace muon
