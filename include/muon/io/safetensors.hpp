// muon/io/safetensors.hpp: read and write .safetensors files without LibTorch or Python.
//
// A file is an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} plus an optional "__metadata__" string map, then
// the tensors' raw little-endian bytes. Use it for optimizer checkpoints (`param/exp_avg`, step and
// hyper-parameters in the metadata) and to load reference fixtures written by Python's safetensors.
// `File` memory-maps the file and validates the whole header on open, so every later access is
// in bounds; `write` replaces the target atomically, so a crash never leaves a torn checkpoint.
//
// Every byte of a file is untrusted. `File::open` refuses, with a muon::FileError naming the file
// and the tensor or field: a header length beyond the file or beyond kMaxHeaderBytes (100 MB, as
// Python's safetensors), more than kMaxDims dimensions (8), a product of the non-zero dimensions
// beyond int64 (so TensorInfo::numel never overflows, even when another dimension is 0), an
// unknown dtype, and data_offsets that are not begin <= end <= data size with end - begin ==
// numel * dtype size, or that overlap or leave holes. Nothing is allocated from a header's numbers:
// to_float's vector holds at most twice the bytes of the tensor's data in the file (F16 to float).
//
//   namespace st = muon::safetensors;
//   std::vector<float> m(6, 0.0f);
//   const st::TensorToWrite tensors[] = {st::tensor_f32("w/exp_avg", {2, 3}, m)};
//   st::write("opt.safetensors", tensors, {{"step", "100"}});
//   st::File file = st::File::open("opt.safetensors");
//   std::vector<float> back = file.to_float("w/exp_avg");
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "muon/error.hpp"
#include "muon/io/json.hpp"
#include "muon/io/atomic_file.hpp"
#include "muon/tensor.hpp"

namespace muon::safetensors {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is mapped without byte swapping");

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

// The largest header File::open reads (Python's safetensors refuses larger ones too).
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
// The most dimensions a tensor may have (the optimizer's tensors have at most 3).
inline constexpr std::size_t kMaxDims = 8;

namespace detail {

struct DTypeTraits {
  std::string_view name;
  std::size_t size;
};

// Indexed by DType.
inline constexpr std::array<DTypeTraits, 10> dtype_traits{{{"F64", 8},
                                                           {"F32", 4},
                                                           {"F16", 2},
                                                           {"BF16", 2},
                                                           {"I64", 8},
                                                           {"I32", 4},
                                                           {"I16", 2},
                                                           {"I8", 1},
                                                           {"U8", 1},
                                                           {"BOOL", 1}}};

}  // namespace detail

constexpr std::string_view dtype_name(DType dtype) {
  return detail::dtype_traits[static_cast<std::size_t>(dtype)].name;
}

constexpr std::size_t dtype_size(DType dtype) {
  return detail::dtype_traits[static_cast<std::size_t>(dtype)].size;
}

constexpr std::optional<DType> parse_dtype(std::string_view name) {
  for (std::size_t i = 0; i < detail::dtype_traits.size(); ++i) {
    if (detail::dtype_traits[i].name == name) return static_cast<DType>(i);
  }
  return std::nullopt;
}

struct TensorInfo {
  DType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin, end;  // offsets into the data buffer, end exclusive

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (const std::int64_t d : shape) n *= d;
    return n;
  }
};

namespace detail {

inline std::string os_error(int err) { return std::generic_category().message(err); }

// Byte count of a tensor with non-negative dims, or nullopt when the product of its non-zero
// dims exceeds int64 (so that TensorInfo::numel cannot overflow in any order of multiplication,
// even when another dim is 0) or the byte count exceeds uint64.
inline std::optional<std::uint64_t> checked_byte_count(std::span<const std::int64_t> shape,
                                                       DType dtype) {
  constexpr auto max_numel = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t nonzero_product = 1;
  bool has_zero = false;
  for (const std::int64_t d : shape) {
    if (d == 0) {
      has_zero = true;
      continue;
    }
    const auto dim = static_cast<std::uint64_t>(d);
    if (nonzero_product > max_numel / dim) return std::nullopt;
    nonzero_product *= dim;
  }
  if (has_zero) return 0;
  if (nonzero_product > std::numeric_limits<std::uint64_t>::max() / dtype_size(dtype)) return std::nullopt;
  return nonzero_product * dtype_size(dtype);
}

class Mapping {
 public:
  Mapping() = default;
  Mapping(void* addr, std::size_t size) noexcept : addr_(addr), size_(size) {}
  Mapping(Mapping&& other) noexcept
      : addr_(std::exchange(other.addr_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  Mapping& operator=(Mapping&& other) noexcept {
    if (this != &other) {
      reset();
      addr_ = std::exchange(other.addr_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~Mapping() { reset(); }

  const std::byte* data() const noexcept { return static_cast<const std::byte*>(addr_); }
  std::size_t size() const noexcept { return size_; }

 private:
  void reset() noexcept {
    if (addr_ != nullptr) ::munmap(addr_, size_);
    addr_ = nullptr;
    size_ = 0;
  }

  void* addr_ = nullptr;
  std::size_t size_ = 0;
};

// Reads errno before anything else can overwrite it.
[[noreturn]] inline void throw_read_error(const std::filesystem::path& path, const char* step) {
  const int err = errno;
  throw FileError("cannot " + std::string(step) + " safetensors file '" + path.string() + "': " +
                  os_error(err));
}

struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) {
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  }
  // Subnormal half: mantissa * 2^-24 is a normal float, and both factors are exact.
  const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
  return sign ? -magnitude : magnitude;
}

// memcpy per element: tensor data need not be aligned for its type.
template <typename Raw, typename Widen>
void widen_each(std::span<const std::byte> raw, std::span<float> out, Widen widen) {
  for (std::size_t i = 0; i < out.size(); ++i) {
    Raw r;
    std::memcpy(&r, raw.data() + i * sizeof(Raw), sizeof(Raw));
    out[i] = widen(r);
  }
}

}  // namespace detail

// Read-only, memory-mapped view of one .safetensors file. Movable, not copyable; unmaps in dtor.
// The mapping shares the file's inode: `write` renames a new inode over the path, so an open File
// keeps seeing the old contents; truncating the file in place would make reads fault (SIGBUS).
class File {
 public:
  // Throws muon::FileError naming the file if it cannot be read or its header is invalid.
  static File open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<std::string>& names() const { return names_; }  // in data-offset order

  bool contains(std::string_view name) const { return infos_.find(name) != infos_.end(); }

  const TensorInfo& info(std::string_view name) const {
    const auto it = infos_.find(name);
    if (it == infos_.end()) {
      throw FileError("tensor '" + std::string(name) + "' not found in safetensors file '" +
                      path_.string() + "'");
    }
    return it->second;
  }

  // Raw little-endian bytes, aligned only as the writer chose (8 bytes here and in Python's).
  std::span<const std::byte> bytes(std::string_view name) const {
    const TensorInfo& t = info(name);
    return {data_ + t.begin, static_cast<std::size_t>(t.end - t.begin)};
  }

  // Converts F32/F64/F16/BF16 to float (BF16/F16 exact widening, F64 rounded); throws FileError
  // for other dtypes.
  std::vector<float> to_float(std::string_view name) const;

 private:
  File() = default;
  [[noreturn]] void fail(const std::string& what) const {
    throw FileError("invalid safetensors file '" + path_.string() + "': " + what);
  }
  void parse_header();
  TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry) const;
  void parse_metadata(const nlohmann::json& metadata);

  std::filesystem::path path_;
  detail::Mapping mapping_;
  const std::byte* data_ = nullptr;
  std::map<std::string, std::string> metadata_;
  std::vector<std::string> names_;
  std::map<std::string, TensorInfo, std::less<>> infos_;
};

inline File File::open(const std::filesystem::path& path) {
  File file;
  file.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) detail::throw_read_error(path, "open");
  const detail::FdCloser closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) detail::throw_read_error(path, "stat");
  if (!S_ISREG(st.st_mode)) file.fail("not a regular file");
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size < 8) {
    file.fail("file has " + std::to_string(size) + " bytes, fewer than the 8-byte header length");
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (addr == MAP_FAILED) detail::throw_read_error(path, "map");
  file.mapping_ = detail::Mapping(addr, size);
  file.parse_header();
  return file;
}

inline void File::parse_header() {
  const std::size_t after_prefix = mapping_.size() - 8;
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, mapping_.data(), 8);
  if (header_size > after_prefix) {
    fail("truncated: header length " + std::to_string(header_size) + " exceeds the " +
         std::to_string(after_prefix) + " bytes after the length prefix");
  }
  if (header_size > kMaxHeaderBytes) {
    fail("header length " + std::to_string(header_size) + " exceeds the limit of " +
         std::to_string(kMaxHeaderBytes) + " bytes");
  }
  const auto* text = reinterpret_cast<const char*>(mapping_.data() + 8);
  data_ = mapping_.data() + 8 + header_size;
  const std::uint64_t data_size = after_prefix - header_size;

  // nlohmann stops at a NUL byte as if the input ended there, which would accept trailing junk.
  if (std::memchr(text, 0, header_size) != nullptr) fail("header contains a NUL byte");

  // nlohmann keeps the last of duplicate keys silently; the callback sees every key first.
  std::vector<std::set<std::string>> keys_per_open_object;
  using Event = nlohmann::json::parse_event_t;
  const auto reject_duplicates = [&](int, Event event, nlohmann::json& parsed) {
    if (event == Event::object_start) {
      keys_per_open_object.emplace_back();
    } else if (event == Event::object_end) {
      keys_per_open_object.pop_back();
    } else if (event == Event::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!keys_per_open_object.back().insert(key).second) {
        fail(keys_per_open_object.size() == 1 ? "duplicate entry '" + key + "' in header"
                                              : "duplicate key '" + key + "' in header");
      }
    }
    return true;
  };
  const nlohmann::json header = io::parse_json(std::string_view(text, header_size),
                                               "invalid safetensors file '" + path_.string() + "': header",
                                               reject_duplicates);
  if (!header.is_object()) fail("header is not a JSON object");

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      parse_metadata(entry);
    } else {
      infos_.emplace(name, parse_entry(name, entry));
    }
  }

  std::vector<std::pair<const std::string*, const TensorInfo*>> by_offset;
  for (const auto& [name, t] : infos_) by_offset.emplace_back(&name, &t);
  std::ranges::stable_sort(by_offset, [](const auto& a, const auto& b) {
    return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
  });
  std::uint64_t expected_begin = 0;
  for (const auto& [name, t] : by_offset) {
    if (t->begin < expected_begin) {
      fail("tensor '" + *name + "' (data_offsets [" + std::to_string(t->begin) + ", " +
           std::to_string(t->end) + "]) overlaps tensor '" + names_.back() + "', which ends at " +
           std::to_string(expected_begin));
    }
    if (t->begin > expected_begin) {
      fail("hole of " + std::to_string(t->begin - expected_begin) + " bytes at offset " +
           std::to_string(expected_begin) + ", before tensor '" + *name + "'");
    }
    expected_begin = t->end;
    names_.push_back(*name);
  }
  if (expected_begin > data_size) {
    fail("truncated: expected " + std::to_string(expected_begin) + " bytes of data, file has " +
         std::to_string(data_size));
  }
  if (expected_begin < data_size) {
    fail(std::to_string(data_size - expected_begin) + " bytes after the last tensor's data " +
         "(offset " + std::to_string(expected_begin) + ") belong to no tensor");
  }
}

inline TensorInfo File::parse_entry(const std::string& name, const nlohmann::json& entry) const {
  const auto bad = [&](const std::string& what) { fail("tensor '" + name + "': " + what); };
  if (!entry.is_object()) bad("entry is not a JSON object");

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) bad("missing or non-string \"dtype\"");
  const auto& dtype_text = dtype_it->get_ref<const std::string&>();
  const std::optional<DType> dtype = parse_dtype(dtype_text);
  if (!dtype) bad("unknown dtype \"" + dtype_text + "\"");

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) bad("missing or non-array \"shape\"");
  if (shape_it->size() > kMaxDims) {
    bad("\"shape\" has " + std::to_string(shape_it->size()) + " dimensions, more than the " +
        std::to_string(kMaxDims) + " allowed");
  }
  std::vector<std::int64_t> shape;
  for (const auto& dim : *shape_it) {
    if (dim.is_number_unsigned()) {
      const auto d = dim.get<std::uint64_t>();
      if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        bad("dimension " + std::to_string(d) + " is too large");
      }
      shape.push_back(static_cast<std::int64_t>(d));
    } else if (dim.is_number_integer()) {
      bad("negative dimension " + std::to_string(dim.get<std::int64_t>()) + " in \"shape\"");
    } else {
      bad("\"shape\" holds a non-integer: " + dim.dump());
    }
  }

  const auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) bad("missing \"data_offsets\"");
  const auto& offsets = *offsets_it;
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    bad("\"data_offsets\" is " + offsets.dump() + ", not [begin, end] of non-negative integers");
  }
  const auto begin = offsets[0].get<std::uint64_t>();
  const auto end = offsets[1].get<std::uint64_t>();
  if (end < begin) bad("\"data_offsets\" " + offsets.dump() + " has end before begin");

  const std::optional<std::uint64_t> needed = detail::checked_byte_count(shape, *dtype);
  if (!needed) {
    bad("\"shape\" " + muon::to_string(shape) +
        " is too large: the product of its non-zero dimensions exceeds 2^63 - 1 elements");
  }
  if (end - begin != *needed) {
    bad("\"data_offsets\" " + offsets.dump() + " span " + std::to_string(end - begin) +
        " bytes, but shape " + muon::to_string(shape) + " of " + dtype_text + " needs " +
        std::to_string(*needed));
  }
  return {*dtype, std::move(shape), begin, end};
}

inline void File::parse_metadata(const nlohmann::json& metadata) {
  if (!metadata.is_object()) fail("\"__metadata__\" is not a JSON object");
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) fail("\"__metadata__\" value of '" + key + "' is not a string");
    metadata_.emplace(key, value.get<std::string>());
  }
}

inline std::vector<float> File::to_float(std::string_view name) const {
  const TensorInfo& t = info(name);
  const std::span<const std::byte> raw = bytes(name);
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  switch (t.dtype) {
    case DType::F32:
      detail::widen_each<float>(raw, out, [](float v) { return v; });
      break;
    case DType::F64:
      detail::widen_each<double>(raw, out, [](double v) { return static_cast<float>(v); });
      break;
    case DType::F16:
      detail::widen_each<std::uint16_t>(raw, out, detail::f16_to_float);
      break;
    case DType::BF16:
      detail::widen_each<std::uint16_t>(raw, out, [](std::uint16_t v) {
        return std::bit_cast<float>(static_cast<std::uint32_t>(v) << 16);
      });
      break;
    default:
      throw FileError("tensor '" + std::string(name) + "' in safetensors file '" + path_.string() +
                      "' has dtype " + std::string(dtype_name(t.dtype)) +
                      "; to_float reads only F32, F64, F16 and BF16");
  }
  return out;
}

// `data` is borrowed: it must stay alive until `write` returns.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::span<const std::byte> data;
};

inline TensorToWrite tensor_f32(std::string name, std::vector<std::int64_t> shape,
                                std::span<const float> values) {
  if (std::ranges::any_of(shape, [](std::int64_t d) { return d < 0; })) {
    throw InvalidArgument("tensor '" + name + "': shape " + muon::to_string(shape) +
                          " has a negative dimension");
  }
  const std::optional<std::uint64_t> bytes = detail::checked_byte_count(shape, DType::F32);
  if (!bytes || *bytes != values.size_bytes()) {
    throw InvalidArgument("tensor '" + name + "': shape " + muon::to_string(shape) +
                          " does not hold the " + std::to_string(values.size()) + " values given");
  }
  return {std::move(name), DType::F32, std::move(shape), std::as_bytes(values)};
}

namespace detail {

// Validates the tensors and returns the header JSON padded with spaces to a multiple of 8 bytes,
// so that the data buffer starts 8-byte aligned in the file (and in a mapping of it).
inline std::string build_header(std::span<const TensorToWrite> tensors,
                                const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string_view> seen;
  std::uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name == "__metadata__") {
      throw InvalidArgument("tensor name '__metadata__' is reserved for the file's metadata");
    }
    if (!seen.insert(t.name).second) {
      throw InvalidArgument("duplicate tensor name '" + t.name + "'");
    }
    if (std::ranges::any_of(t.shape, [](std::int64_t d) { return d < 0; })) {
      throw InvalidArgument("tensor '" + t.name + "': shape " + muon::to_string(t.shape) +
                            " has a negative dimension");
    }
    if (t.shape.size() > kMaxDims) {
      throw InvalidArgument("tensor '" + t.name + "': shape " + muon::to_string(t.shape) + " has more than " +
                            std::to_string(kMaxDims) + " dimensions, which File::open refuses");
    }
    const std::optional<std::uint64_t> bytes = checked_byte_count(t.shape, t.dtype);
    if (!bytes) {
      throw InvalidArgument("tensor '" + t.name + "': shape " + muon::to_string(t.shape) +
                            " is too large");
    }
    if (*bytes != t.data.size()) {
      throw InvalidArgument("tensor '" + t.name + "': data has " + std::to_string(t.data.size()) +
                            " bytes, but shape " + muon::to_string(t.shape) + " of " +
                            std::string(dtype_name(t.dtype)) + " needs " + std::to_string(*bytes));
    }
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + *bytes}}};
    offset += *bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::type_error& e) {
    throw InvalidArgument(std::string("tensor names and metadata must be valid UTF-8: ") +
                          e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace detail

// Writes atomically (muon/io/atomic_file.hpp: temp file, fsync, rename, fsync of the directory).
// Tensors are laid out in the given order. Invalid input
// (duplicate names, data size not matching shape and dtype) throws muon::InvalidArgument before
// the disk is touched. On any I/O failure the temp file is removed, `path` is untouched, and
// muon::FileError names the file and the OS error; the one exception is a failed fsync of the
// directory, reported after `path` was already replaced.
inline void write(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                  const std::map<std::string, std::string>& metadata = {}) {
  const std::string header = detail::build_header(tensors, metadata);
  const std::uint64_t header_size = header.size();
  std::vector<std::span<const std::byte>> pieces{std::as_bytes(std::span(&header_size, 1)),
                                                 std::as_bytes(std::span(header))};
  for (const TensorToWrite& t : tensors) pieces.push_back(t.data);
  io::write_file_atomically(path, pieces, "safetensors file");
}

}  // namespace muon::safetensors
