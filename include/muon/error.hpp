// muon/error.hpp: the typed errors of the public API.
//
// Every failure the library reports is one of these, so a trainer can tell a bad gradient
// (skip the batch) from a bad file (stop) without parsing messages. Each message names the
// parameter, option or file at fault and what to do about it.
//
//   try { opt.step(); } catch (const muon::NonFiniteGradient& e) { log(e.parameter()); }
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

namespace muon {

// Base of every error the library throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An option, a parameter table or a call argument is invalid; nothing was changed.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A gradient or buffer does not have its parameter's shape; nothing was changed.
class ShapeMismatch : public Error {
 public:
  using Error::Error;
};

// A gradient holds NaN or Inf; the step was rejected and nothing was changed.
class NonFiniteGradient : public Error {
 public:
  NonFiniteGradient(std::string parameter, const std::string& message)
      : Error(message), parameter_(std::move(parameter)) {}
  [[nodiscard]] const std::string& parameter() const noexcept { return parameter_; }

 private:
  std::string parameter_;
};

// A file could not be read or written, or its contents are corrupt or truncated.
class FileError : public Error {
 public:
  using Error::Error;
};

// A saved optimizer state does not match the live parameter table (names, shapes, dtypes).
class StateMismatch : public Error {
 public:
  using Error::Error;
};

}  // namespace muon
