// fuzz/fuzz_support.hpp: what every harness shares: its input as a file, and the one expected outcome.
//
// Every parser here reads untrusted files, so each harness writes libFuzzer's input to a file in
// a directory of its own process (under /dev/shm when it exists, memory-backed and fast) and
// calls the parser on that path. A muon::Error is the expected way to refuse an input; any other
// exception escapes LLVMFuzzerTestOneInput, terminates the process and is reported as a crash,
// as are sanitizer reports, timeouts and memory beyond -rss_limit_mb.
//
//   extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
//     const auto path = muon::fuzz::write_input("config.json", data, size);
//     muon::fuzz::expect_muon_errors([&] { (void)moonlight::Config::load(path); });
//     return 0;
//   }
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "muon/error.hpp"

namespace muon::fuzz {

// This process's scratch directory, created on first use and removed at exit.
inline const std::filesystem::path& scratch_dir() {
  struct Dir {
    std::filesystem::path path;
    Dir() {
      const std::filesystem::path shm = "/dev/shm";
      const std::filesystem::path base = std::filesystem::is_directory(shm) ? shm : std::filesystem::temp_directory_path();
      path = base / ("muon_fuzz_" + std::to_string(::getpid()));
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  };
  static const Dir dir;
  return dir.path;
}

// Writes the bytes to scratch_dir()/name, replacing what was there, and returns the path.
inline std::filesystem::path write_input(const std::string& name, const std::uint8_t* data, std::size_t size) {
  const std::filesystem::path path = scratch_dir() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) __builtin_trap();  // the harness itself failed, not the parser
  return path;
}

// Runs `parse`; a muon::Error is an expected refusal, anything else escapes (a finding).
template <class F>
void expect_muon_errors(F&& parse) {
  try {
    parse();
  } catch (const muon::Error&) {
  }
}

}  // namespace muon::fuzz
