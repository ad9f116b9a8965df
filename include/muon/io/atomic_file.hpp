// muon/io/atomic_file.hpp: replacing a file so that readers, and the disk after a crash, see
// either the old file or the whole new one, never a part.
//
// The bytes go to a temporary file beside the target (path + ".tmp.<pid>"), which is fsynced,
// renamed over the target, and then the directory is fsynced so that the rename itself survives a
// power failure. On any failure the temporary file is removed, the target is untouched, and a
// muon::FileError names the file, the step and the OS error; the one exception is a failed fsync
// of the directory, reported after the target was already replaced.
//
//   muon::io::write_file_atomically("run/state.json", json.dump(2), "trainer state");
#pragma once

#include <cerrno>
#include <cstddef>
#include <fcntl.h>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <unistd.h>

#include "muon/error.hpp"

namespace muon::io {

namespace detail {

// Reads errno before anything else can overwrite it.
[[noreturn]] inline void throw_write_error(std::string_view what, const std::filesystem::path& target,
                                           const char* step, const std::string& subject) {
  const int err = errno;
  throw FileError("cannot write " + std::string(what) + " '" + target.string() + "': " + step + " '" + subject +
                  "' failed: " + std::generic_category().message(err));
}

inline bool write_all(int fd, std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return true;
}

// Closes and removes the temporary file unless it was renamed into place.
struct TempFile {
  std::string path;
  int fd;
  bool renamed = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!renamed) ::unlink(path.c_str());
  }
};

}  // namespace detail

// Makes a rename or a new entry in `dir` durable. `what` and `target` name the failure.
inline void fsync_directory(const std::filesystem::path& dir, std::string_view what, const std::filesystem::path& target) {
  const std::filesystem::path parent = dir.empty() ? "." : dir;
  const int fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) detail::throw_write_error(what, target, "opening directory", parent.string());
  const bool synced = ::fsync(fd) == 0;
  if (!synced) {
    const int err = errno;
    ::close(fd);
    errno = err;
    detail::throw_write_error(what, target, "fsync of directory", parent.string());
  }
  ::close(fd);
}

// Writes the concatenation of `pieces` to `path` atomically (see the header comment). `what` says
// what the file is, for messages ("safetensors file", "config").
inline void write_file_atomically(const std::filesystem::path& path, std::span<const std::span<const std::byte>> pieces,
                                  std::string_view what) {
  const std::string temp_path = path.string() + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) detail::throw_write_error(what, path, "creating", temp_path);
  detail::TempFile temp{temp_path, fd};
  for (const std::span<const std::byte> piece : pieces) {
    if (!detail::write_all(fd, piece)) detail::throw_write_error(what, path, "writing", temp_path);
  }
  if (::fsync(fd) != 0) detail::throw_write_error(what, path, "fsync of", temp_path);
  temp.fd = -1;
  if (::close(fd) != 0) detail::throw_write_error(what, path, "closing", temp_path);
  if (::rename(temp_path.c_str(), path.c_str()) != 0) detail::throw_write_error(what, path, "renaming", temp_path);
  temp.renamed = true;
  fsync_directory(path.parent_path(), what, path);
}

inline void write_file_atomically(const std::filesystem::path& path, std::string_view text, std::string_view what) {
  const std::span<const std::byte> pieces[] = {std::as_bytes(std::span(text))};
  write_file_atomically(path, pieces, what);
}

}  // namespace muon::io
