// muon/options_json.hpp: options structs to and from JSON, through their field tables (muon/schema.hpp).
//
// Every field is written, by its table name: enums by name, an unset std::optional as null, a
// variant as an object with its alternative's "kind" and fields, a list as an array. Floats go
// through double and back, which round-trips exactly. Reading names the field at fault (its path)
// and what was expected, refuses keys that are not fields (a typo never silently keeps a
// default), and either requires every field (a saved state) or keeps the defaults of those left
// out (a run config).
//
//   nlohmann::json j = muon::to_json(options);
//   muon::Options o = muon::options_from_json(j);   // complete and valid, or InvalidArgument
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <utility>

#include "muon/error.hpp"
#include "muon/options.hpp"
#include "muon/schema.hpp"

namespace muon {

template <class T>
[[nodiscard]] nlohmann::json value_to_json(const T& value) {
  if constexpr (NamedEnum<T>) {
    return std::string(enum_name(value));
  } else if constexpr (OptionalField<T>) {
    return value ? value_to_json(*value) : nlohmann::json(nullptr);
  } else if constexpr (VectorField<T>) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& e : value) out.push_back(value_to_json(e));
    return out;
  } else if constexpr (VariantField<T>) {
    return std::visit(
        [](const auto& alternative) {
          nlohmann::json out = value_to_json(alternative);
          out["kind"] = std::string(Schema<std::remove_cvref_t<decltype(alternative)>>::kind);
          return out;
        },
        value);
  } else if constexpr (HasSchema<T>) {
    nlohmann::json out = nlohmann::json::object();
    for_each_field(value, [&](const auto& f, const auto& v) { out[std::string(f.name)] = value_to_json(v); });
    return out;
  } else {
    return value;  // numbers, bool, std::string
  }
}

// Every field of an options struct, by its table.
template <HasSchema S>
[[nodiscard]] nlohmann::json to_json(const S& s) {
  return value_to_json(s);
}

// What reading does with a field the JSON leaves out.
enum class MissingFields { fail, keep };

template <class T>
void value_from_json(const nlohmann::json& j, T& value, const std::string& path, MissingFields missing) {
  const auto fail = [&](const std::string& expected) {
    throw InvalidArgument(path + " is " + j.dump() + ", expected " + expected);
  };
  if constexpr (std::same_as<T, bool>) {
    if (!j.is_boolean()) fail("true or false");
    value = j.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!j.is_number_integer()) fail("an integer");
    if (j.is_number_unsigned() ? !std::in_range<T>(j.get<std::uint64_t>()) : !std::in_range<T>(j.get<std::int64_t>()))
      fail("an integer that fits its type");
    value = j.get<T>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!j.is_number()) fail("a number");
    value = static_cast<T>(j.get<double>());
  } else if constexpr (std::same_as<T, std::string>) {
    if (!j.is_string()) fail("a string");
    value = j.get<std::string>();
  } else if constexpr (NamedEnum<T>) {
    const auto parsed = j.is_string() ? enum_value<T>(j.get<std::string>()) : std::nullopt;
    if (!parsed) fail(enum_choices<T>());
    value = *parsed;
  } else if constexpr (OptionalField<T>) {
    if (j.is_null()) {
      value.reset();
    } else {
      typename T::value_type inner{};
      value_from_json(j, inner, path, missing);
      value = inner;
    }
  } else if constexpr (VectorField<T>) {
    if (!j.is_array()) fail("an array");
    T out(j.size());
    for (std::size_t i = 0; i < j.size(); ++i) value_from_json(j[i], out[i], path + "[" + std::to_string(i) + "]", missing);
    value = std::move(out);
  } else if constexpr (VariantField<T>) {
    if (!j.is_object() || !j.contains("kind") || !j.at("kind").is_string())
      fail("an object with a \"kind\" (" + variant_kinds<T>() + ")");
    nlohmann::json fields = j;
    fields.erase("kind");
    const std::string kind = j.at("kind").get<std::string>();
    // A new kind starts from its defaults; the same kind as the current value starts from it.
    const bool found = with_alternative_of_kind<T>(kind, [&](auto alternative) {
      if (const auto* current = std::get_if<decltype(alternative)>(&value)) alternative = *current;
      value_from_json(fields, alternative, path, missing);
      value = alternative;
    });
    if (!found) throw InvalidArgument(path + ".kind is \"" + kind + "\", expected " + variant_kinds<T>());
  } else {
    static_assert(HasSchema<T>, "a field's type needs a Schema to be read from JSON");
    if (!j.is_object()) fail("an object");
    for (const auto& item : j.items()) {
      const std::string& key = item.key();  // not a structured binding: clang 14 cannot capture one
      bool known = false;
      for_each_field(value, [&](const auto& f, auto&) { known = known || f.name == key; });
      if (!known) throw InvalidArgument(path + "." + key + " is not an option (see the fields of " + path + ")");
    }
    for_each_field(value, [&](const auto& f, auto& member) {
      const std::string name(f.name), at = path + "." + name;
      if (j.contains(name))
        value_from_json(j.at(name), member, at, missing);
      else if (missing == MissingFields::fail)
        throw InvalidArgument(at + " is missing");
    });
  }
}

// Reads `j` over `base` (the defaults unless given) and validates the result. Throws
// InvalidArgument naming the first field at fault, under the name `path`.
template <HasSchema S>
[[nodiscard]] S from_json(const nlohmann::json& j, const std::string& path, MissingFields missing, S base = {}) {
  value_from_json(j, base, path, missing);
  validate_fields(base, path);
  return base;
}

// A complete, valid Options (as a saved state holds them).
[[nodiscard]] inline Options options_from_json(const nlohmann::json& j) {
  return from_json<Options>(j, "Options", MissingFields::fail);
}

}  // namespace muon
