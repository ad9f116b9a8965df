// muon/schema.hpp: one field table per options struct, and what is derived from it.
//
// Every options struct S has one table, Schema<S>, written beside the struct: its members in
// order, each with its name and, for numbers, the range it must lie in. Everything that reads or
// writes options by field comes from that table alone: validation (messages name the field's
// path, e.g. "Options.muon.ns.steps"), the JSON form (muon/options_json.hpp), ZeRO-1's rank
// agreement (field_fingerprints), the LibTorch adapter's archive, and the Moonlight example's run
// config and command line. The table must list every member: check_complete<S>() compares its
// length with the number of S's members, so a member added without an entry fails the build.
//
//   template <> struct muon::Schema<AdamWOptions> {
//     static constexpr auto fields = std::tuple{field("beta1", &AdamWOptions::beta1, kUnitInterval), ...};
//   };
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "muon/error.hpp"

namespace muon {

// The range a number must lie in; every number must also be finite.
struct Limits {
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_open = false;  // min itself is excluded
  bool max_open = false;  // max itself is excluded
};
inline constexpr Limits kAnyFinite{};
inline constexpr Limits kNonNegative{.min = 0.0};
inline constexpr Limits kPositive{.min = 0.0, .min_open = true};
inline constexpr Limits kUnitInterval{.min = 0.0, .max = 1.0, .max_open = true};  // [0, 1)
inline constexpr Limits kFraction{.min = 0.0, .max = 1.0};                        // [0, 1]

template <class S, class M>
struct Field {
  using MemberPointer = M S::*;  // an alias: nvcc's generated host code adds parentheses otherwise
  std::string_view name;
  MemberPointer member;
  Limits limits{};
};
template <class S, class M>
constexpr Field<S, M> field(std::string_view name, M S::*member, Limits limits = {}) {
  return {name, member, limits};
}

// Specialised beside each options struct: `static constexpr auto fields = std::tuple{field(...), ...};`
// and optionally `static void check(const S&, const std::string& path)` for rules across fields.
// A struct that is one alternative of a std::variant also has `static constexpr std::string_view kind`.
template <class S>
struct Schema;
template <class S>
concept HasSchema = requires { Schema<S>::fields; };

// Specialised beside each enum: `static constexpr std::array names{std::pair{E::x, "x"}, ...};`
template <class E>
struct EnumNames;
template <class E>
concept NamedEnum = std::is_enum_v<E> && requires { EnumNames<E>::names; };

template <NamedEnum E>
[[nodiscard]] constexpr std::string_view enum_name(E value) {
  for (const auto& [v, n] : EnumNames<E>::names)
    if (v == value) return n;
  return "?";
}
template <NamedEnum E>
[[nodiscard]] constexpr std::optional<E> enum_value(std::string_view text) {
  for (const auto& [v, n] : EnumNames<E>::names)
    if (text == n) return v;
  return std::nullopt;
}
// "\"a\", \"b\" or \"c\"", for messages.
template <NamedEnum E>
[[nodiscard]] std::string enum_choices() {
  std::string out;
  const auto& names = EnumNames<E>::names;
  for (std::size_t i = 0; i < names.size(); ++i)
    out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + ("\"" + std::string(names[i].second) + "\"");
  return out;
}

namespace detail {

// Converts to a reference of any member type: an aggregate accepts as many of these in braces as
// it has members. Only ever named in unevaluated requires-expressions.
struct AnyMember {
  template <class T>
  operator T&() const&&;  // NOLINT: implicit by design
};
template <class S, class... A>
consteval std::size_t member_count() {
  if constexpr (requires { S{A{}..., AnyMember{}}; })
    return member_count<S, A..., AnyMember>();
  else
    return sizeof...(A);
}

template <class T>
struct IsOptional : std::false_type {};
template <class T>
struct IsOptional<std::optional<T>> : std::true_type {};
template <class T>
struct IsVector : std::false_type {};
template <class T>
struct IsVector<std::vector<T>> : std::true_type {};
template <class T>
struct IsVariant : std::false_type {};
template <class... T>
struct IsVariant<std::variant<T...>> : std::true_type {};

}  // namespace detail

template <class T>
concept Number = std::is_arithmetic_v<T> && !std::same_as<T, bool>;
template <class T>
concept OptionalField = detail::IsOptional<T>::value;
template <class T>
concept VectorField = detail::IsVector<T>::value;
template <class T>
concept VariantField = detail::IsVariant<T>::value;

// Fails the build when Schema<S> does not list every member of S.
template <HasSchema S>
consteval bool check_complete() {
  static_assert(std::tuple_size_v<std::remove_cvref_t<decltype(Schema<S>::fields)>> ==
                    detail::member_count<S>(),
                "muon::Schema<S> must list every member of S, in order: add the new member's field entry");
  return true;
}

// Calls f(field, member) for every field of s, in table order.
template <class S, class F>
  requires HasSchema<std::remove_const_t<S>>
void for_each_field(S& s, F&& f) {
  using T = std::remove_const_t<S>;
  static_assert(check_complete<T>());
  std::apply([&](const auto&... fields) { (f(fields, s.*(fields.member)), ...); }, Schema<T>::fields);
}

// Calls f(alternative) for the alternative of variant v whose Schema kind is `kind`, default
// constructed; returns false when no alternative has that kind.
template <VariantField V, class F>
bool with_alternative_of_kind(std::string_view kind, F&& f) {
  bool found = false;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((!found && Schema<std::variant_alternative_t<I, V>>::kind == kind
          ? (found = true, f(std::variant_alternative_t<I, V>{}), 0)
          : 0),
     ...);
  }(std::make_index_sequence<std::variant_size_v<V>>{});
  return found;
}
template <VariantField V>
[[nodiscard]] std::string variant_kinds() {
  std::string out;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((out += (I == 0 ? "\"" : I + 1 == sizeof...(I) ? " or \"" : ", \"") +
             std::string(Schema<std::variant_alternative_t<I, V>>::kind) + "\""),
     ...);
  }(std::make_index_sequence<std::variant_size_v<V>>{});
  return out;
}

[[nodiscard]] inline std::string format_number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", v);
  return text;
}

[[nodiscard]] inline std::string describe(const Limits& l) {
  const bool low = std::isfinite(l.min), high = std::isfinite(l.max);
  if (low && high)
    return std::string("in ") + (l.min_open ? "(" : "[") + format_number(l.min) + ", " + format_number(l.max) +
           (l.max_open ? ")" : "]");
  if (low) return std::string(l.min_open ? "> " : ">= ") + format_number(l.min);
  if (high) return std::string(l.max_open ? "< " : "<= ") + format_number(l.max);
  return "finite";
}

template <class T>
void validate_value(const T& value, const std::string& path, const Limits& limits);

// Checks every field of s against its table (the path names it in the message), then the
// struct's rules across fields. Throws InvalidArgument; changes nothing.
template <HasSchema S>
void validate_fields(const S& s, const std::string& path) {
  for_each_field(s, [&](const auto& f, const auto& v) { validate_value(v, path + "." + std::string(f.name), f.limits); });
  if constexpr (requires { Schema<S>::check(s, path); }) Schema<S>::check(s, path);
}

template <class T>
void validate_value(const T& value, const std::string& path, const Limits& limits) {
  if constexpr (Number<T>) {
    const auto v = static_cast<double>(value);
    const bool above = limits.min_open ? v > limits.min : v >= limits.min;
    const bool below = limits.max_open ? v < limits.max : v <= limits.max;
    if (!std::isfinite(v) || !above || !below)
      throw InvalidArgument(path + " must be " + (std::isfinite(limits.min) || std::isfinite(limits.max) ? "finite and " : "") +
                            describe(limits) + ", got " + format_number(v));
  } else if constexpr (OptionalField<T>) {
    if (value) validate_value(*value, path, limits);
  } else if constexpr (VectorField<T>) {
    for (std::size_t i = 0; i < value.size(); ++i) validate_value(value[i], path + "[" + std::to_string(i) + "]", limits);
  } else if constexpr (VariantField<T>) {
    std::visit([&](const auto& alternative) { validate_fields(alternative, path); }, value);
  } else if constexpr (HasSchema<T>) {
    validate_fields(value, path);
  }
}

// One hash of a field's value: a field of a nested struct is its own entry, a variant or a list
// is hashed whole. Two ranks agree on options exactly when their fingerprints are equal, and the
// first differing entry names the field.
struct FieldFingerprint {
  std::string path;
  std::int64_t hash;
};

namespace detail {

inline std::uint64_t fnv1a(std::uint64_t h, const void* data, std::size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  return h;
}
inline constexpr std::uint64_t kFnvOffset = 14695981039346656037ull;

template <class T>
std::uint64_t hash_value(std::uint64_t h, const T& value) {
  if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) {
    return fnv1a(h, &value, sizeof value);
  } else if constexpr (std::same_as<T, std::string>) {
    const std::uint64_t size = value.size();
    return fnv1a(fnv1a(h, &size, sizeof size), value.data(), value.size());
  } else if constexpr (OptionalField<T>) {
    const bool set = value.has_value();
    h = fnv1a(h, &set, sizeof set);
    return set ? hash_value(h, *value) : h;
  } else if constexpr (VectorField<T>) {
    const std::uint64_t size = value.size();
    h = fnv1a(h, &size, sizeof size);
    for (const auto& e : value) h = hash_value(h, e);
    return h;
  } else if constexpr (VariantField<T>) {
    const std::uint64_t index = value.index();
    h = fnv1a(h, &index, sizeof index);
    return std::visit([&](const auto& alternative) { return hash_value(h, alternative); }, value);
  } else {
    static_assert(HasSchema<T>, "a field's type needs a Schema to be hashed");
    for_each_field(value, [&](const auto&, const auto& v) { h = hash_value(h, v); });
    return h;
  }
}

template <HasSchema S>
void add_fingerprints(const S& s, const std::string& path, std::vector<FieldFingerprint>& out) {
  for_each_field(s, [&](const auto& f, const auto& v) {
    using T = std::remove_cvref_t<decltype(v)>;
    const std::string at = path + "." + std::string(f.name);
    if constexpr (HasSchema<T>)
      add_fingerprints(v, at, out);
    else
      out.push_back({at, std::bit_cast<std::int64_t>(hash_value(kFnvOffset, v))});
  });
}

}  // namespace detail

template <HasSchema S>
[[nodiscard]] std::vector<FieldFingerprint> field_fingerprints(const S& s, const std::string& path) {
  std::vector<FieldFingerprint> out;
  detail::add_fingerprints(s, path, out);
  return out;
}

// The paths (under `path`) of the fields where a and b differ.
template <HasSchema S>
[[nodiscard]] std::vector<std::string> differing_fields(const S& a, const S& b, const std::string& path) {
  std::vector<std::string> out;
  const auto x = field_fingerprints(a, path), y = field_fingerprints(b, path);
  for (std::size_t i = 0; i < x.size(); ++i)
    if (x[i].hash != y[i].hash) out.push_back(x[i].path);
  return out;
}

// Whether two values are equal in every field of their tables.
template <HasSchema S>
[[nodiscard]] bool equal_fields(const S& a, const S& b) {
  return differing_fields(a, b, "").empty();
}

}  // namespace muon
