// moonlight/metrics_log.hpp: RUN/metrics.jsonl, one JSON line per completed step, exactly once.
//
// A fresh run starts an empty file (an old run's lines are never appended to). A resumed run keeps
// the first line of each step up to the checkpoint's and drops the rest, a partial last line
// included: the steps after the checkpoint are trained again and write their lines again. The
// trainer appends a step's line before it writes that step's checkpoint and syncs the file first,
// so a checkpoint never holds a step whose line could be lost (docs/guarantees.md).
//
//   moonlight::MetricsLog log = moonlight::MetricsLog::resume(run_dir / "metrics.jsonl", 120);
//   log.append(to_json(metrics));
//   log.sync();
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "muon/error.hpp"
#include "muon/io/atomic_file.hpp"

namespace moonlight {

class MetricsLog {
 public:
  // An empty log at `path`, replacing any file there.
  static MetricsLog fresh(const std::filesystem::path& path) {
    muon::io::write_file_atomically(path, std::string_view(), "metrics");
    return MetricsLog(path);
  }

  // The log of a run resumed at `step`: the first line of each step 1..step is kept, in order.
  static MetricsLog resume(const std::filesystem::path& path, std::int64_t step) {
    std::string kept, line;
    std::ifstream in(path);
    std::set<std::int64_t> seen;
    while (std::getline(in, line)) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      const nlohmann::json s = j.is_object() ? j.value("step", nlohmann::json()) : nlohmann::json();
      if (!s.is_number_integer() || s.get<std::int64_t>() < 1 || s.get<std::int64_t>() > step) continue;
      if (seen.insert(s.get<std::int64_t>()).second) kept += line + "\n";
    }
    muon::io::write_file_atomically(path, kept, "metrics");
    return MetricsLog(path);
  }

  MetricsLog(MetricsLog&& other) noexcept : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}
  MetricsLog& operator=(MetricsLog&&) = delete;
  MetricsLog(const MetricsLog&) = delete;
  ~MetricsLog() {
    if (fd_ >= 0) ::close(fd_);
  }

  // One line, written with one append so that a kill leaves the line whole or partial, never
  // interleaved.
  void append(const nlohmann::json& line) {
    const std::string text = line.dump() + "\n";
    std::string_view rest = text;
    while (!rest.empty()) {
      const ssize_t n = ::write(fd_, rest.data(), rest.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail("writing");
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  // Makes every appended line durable.
  void sync() {
    if (::fsync(fd_) != 0) fail("fsync of");
  }

 private:
  explicit MetricsLog(std::filesystem::path path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd_ < 0) fail("opening");
  }
  [[noreturn]] void fail(const char* step) const {
    throw muon::FileError("cannot write metrics '" + path_.string() + "': " + step + " it failed: " +
                          std::generic_category().message(errno));
  }

  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace moonlight
