// Tests of muon/io/safetensors.hpp: round trips, a file written by Python's safetensors, every
// header corruption the reader rejects, and the writer's atomic replacement.
#include "muon/io/safetensors.hpp"

#include <doctest/doctest.h>
#include <sys/resource.h>

#include <array>
#include <bit>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "temp_dir.hpp"

namespace st = muon::safetensors;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp directory, removed with its contents.
struct TempDir : muon::test::TempDir {
  TempDir() : muon::test::TempDir("muon_safetensors") {}
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, std::string_view contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
}

// The 8-byte length prefix, `header` as is (no padding) and `data`.
std::string file_bytes(std::string_view header, std::string_view data) {
  const std::uint64_t n = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out.append(header).append(data);
}

template <typename T>
std::span<const std::byte> bytes_of(const std::vector<T>& values) {
  return std::as_bytes(std::span(values));
}

std::string open_error(const fs::path& path) {
  try {
    st::File::open(path);
  } catch (const muon::FileError& e) {
    return e.what();
  }
  FAIL("opening " << path << " did not throw muon::FileError");
  return {};
}

// Writes `contents` to a file and checks that opening it fails with a message naming the file
// and containing every fragment.
void check_rejected(std::string_view contents, std::initializer_list<std::string_view> fragments) {
  const TempDir dir;
  const fs::path path = dir / "corrupt.safetensors";
  write_file(path, contents);
  const std::string message = open_error(path);
  INFO("message: " << message);
  CHECK(message.find(path.string()) != std::string::npos);
  for (const std::string_view fragment : fragments) {
    CHECK_MESSAGE(message.find(fragment) != std::string::npos, "missing \"" << fragment << '"');
  }
}

void check_header_rejected(std::string_view header, std::string_view data,
                           std::initializer_list<std::string_view> fragments) {
  INFO("header: " << header);
  check_rejected(file_bytes(header, data), fragments);
}

template <typename E>
std::string error_of(auto&& call) {
  try {
    call();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("expected exception was not thrown");
  return {};
}

}  // namespace

TEST_CASE("safetensors: dtype names and sizes") {
  const std::array all = {st::DType::F64, st::DType::F32, st::DType::F16, st::DType::BF16,
                          st::DType::I64, st::DType::I32, st::DType::I16, st::DType::I8,
                          st::DType::U8,  st::DType::BOOL};
  const std::array<std::size_t, 10> sizes = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};
  for (std::size_t i = 0; i < all.size(); ++i) {
    CHECK(st::parse_dtype(st::dtype_name(all[i])) == all[i]);
    CHECK(st::dtype_size(all[i]) == sizes[i]);
  }
  CHECK(st::dtype_name(st::DType::BF16) == "BF16");
  CHECK_FALSE(st::parse_dtype("F8_E4M3").has_value());
  CHECK_FALSE(st::parse_dtype("f32").has_value());
}

TEST_CASE("safetensors: round trip of F32, BF16 and I64 tensors with metadata") {
  const TempDir dir;
  const fs::path path = dir / "state.safetensors";
  const std::vector<float> w = {0.0f, -0.0f, 1.5f, -2.25f, std::numeric_limits<float>::infinity(),
                                std::numeric_limits<float>::denorm_min()};
  const std::vector<std::uint16_t> b = {0x3f80, 0xc040, 0x7fc1};
  const std::vector<std::int64_t> step = {std::numeric_limits<std::int64_t>::min()};
  const std::vector<float> none;
  const std::vector<st::TensorToWrite> tensors = {
      st::tensor_f32("layer.0/w", {2, 3}, w),
      {"empty", st::DType::F32, {0, 4}, bytes_of(none)},
      {"layer.0/b", st::DType::BF16, {3}, bytes_of(b)},
      {"step", st::DType::I64, {}, bytes_of(step)},
  };
  const std::map<std::string, std::string> metadata = {{"step", "100"}, {"format", "muon"}};
  st::write(path, tensors, metadata);
  CHECK(dir.entries() == std::vector<std::string>{"state.safetensors"});

  const std::string raw = read_file(path);
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, raw.data(), 8);
  CHECK(header_size % 8 == 0);
  CHECK(raw.size() == 8 + header_size + 24 + 6 + 8);

  const st::File file = st::File::open(path);
  CHECK(file.path() == path);
  CHECK(file.metadata() == metadata);
  CHECK(file.names() == std::vector<std::string>{"layer.0/w", "empty", "layer.0/b", "step"});
  for (const st::TensorToWrite& t : tensors) {
    CAPTURE(t.name);
    REQUIRE(file.contains(t.name));
    const st::TensorInfo& info = file.info(t.name);
    CHECK(info.dtype == t.dtype);
    CHECK(info.shape == t.shape);
    CHECK(std::ranges::equal(file.bytes(t.name), t.data));
  }
  CHECK(file.info("layer.0/w").begin == 0);
  CHECK(file.info("layer.0/w").end == 24);
  CHECK(file.info("step").numel() == 1);
  CHECK(file.info("empty").numel() == 0);
  CHECK(file.info("empty").begin == file.info("empty").end);
  CHECK_FALSE(file.contains("layer.0"));

  const std::string missing = error_of<muon::FileError>([&] { (void)file.info("layer.1/w"); });
  CHECK(missing.find("layer.1/w") != std::string::npos);
  CHECK(missing.find(path.string()) != std::string::npos);

  const std::vector<float> back = file.to_float("layer.0/w");
  REQUIRE(back.size() == w.size());
  for (std::size_t i = 0; i < w.size(); ++i) {
    CHECK(std::bit_cast<std::uint32_t>(back[i]) == std::bit_cast<std::uint32_t>(w[i]));
  }
}

TEST_CASE("safetensors: no metadata is written when none is given, and File is movable") {
  const TempDir dir;
  const fs::path path = dir / "plain.safetensors";
  const std::vector<float> v = {1.0f, 2.0f};
  const std::array tensors = {st::tensor_f32("v", {2}, v)};
  st::write(path, tensors);
  CHECK(read_file(path).find("__metadata__") == std::string::npos);

  st::File file = st::File::open(path);
  CHECK(file.metadata().empty());
  const st::File moved = std::move(file);
  CHECK(moved.to_float("v") == v);
  st::File assigned = st::File::open(path);
  assigned = st::File::open(path);
  CHECK(assigned.to_float("v") == v);
}

TEST_CASE("safetensors: to_float widens BF16 and F16 exactly and rounds F64") {
  const TempDir dir;
  const fs::path path = dir / "floats.safetensors";
  // 1, -3, +inf, smallest subnormal (2^-133), -0
  const std::vector<std::uint16_t> bf16 = {0x3f80, 0xc040, 0x7f80, 0x0001, 0x8000};
  // 1, -2, 65504 (max), 2^-24 (min subnormal), largest subnormal, 2^-14 (min normal), -inf, -0, NaN
  const std::vector<std::uint16_t> f16 = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff,
                                          0x0400, 0xfc00, 0x8000, 0x7e00};
  const std::vector<double> f64 = {0.1, -2.5, 1.0 + 0x1p-30, 1e-50, 3.0e38};
  const std::vector<std::int64_t> i64 = {1, 2};
  const std::vector<st::TensorToWrite> tensors = {
      {"bf16", st::DType::BF16, {5}, bytes_of(bf16)},
      {"f16", st::DType::F16, {3, 3}, bytes_of(f16)},
      {"f64", st::DType::F64, {5}, bytes_of(f64)},
      {"i64", st::DType::I64, {2}, bytes_of(i64)},
  };
  st::write(path, tensors);
  const st::File file = st::File::open(path);

  const std::vector<float> b = file.to_float("bf16");
  REQUIRE(b.size() == 5);
  CHECK(b[0] == 1.0f);
  CHECK(b[1] == -3.0f);
  CHECK(b[2] == std::numeric_limits<float>::infinity());
  CHECK(b[3] == 0x1p-133f);
  CHECK((b[4] == 0.0f && std::signbit(b[4])));

  const std::vector<float> h = file.to_float("f16");
  REQUIRE(h.size() == 9);
  CHECK(h[0] == 1.0f);
  CHECK(h[1] == -2.0f);
  CHECK(h[2] == 65504.0f);
  CHECK(h[3] == 0x1p-24f);
  CHECK(h[4] == 1023 * 0x1p-24f);
  CHECK(h[5] == 0x1p-14f);
  CHECK(h[6] == -std::numeric_limits<float>::infinity());
  CHECK((h[7] == 0.0f && std::signbit(h[7])));
  CHECK(std::isnan(h[8]));

  const std::vector<float> d = file.to_float("f64");
  REQUIRE(d.size() == 5);
  CHECK(d[0] == 0.1f);
  CHECK(d[1] == -2.5f);
  CHECK(d[2] == 1.0f);
  CHECK(d[3] == 0.0f);
  CHECK(d[4] == static_cast<float>(3.0e38));

  const std::string message = error_of<muon::FileError>([&] { (void)file.to_float("i64"); });
  CHECK(message.find("'i64'") != std::string::npos);
  CHECK(message.find("I64") != std::string::npos);
  CHECK(message.find(path.string()) != std::string::npos);
}

TEST_CASE("safetensors: reads a file written by Python's safetensors") {
  // safetensors 0.8.0: serialize({"step": int64 [7], "weight": float32 [1, -2.5],
  // "bias": bfloat16 scalar 1, "empty": float16 zeros(0, 3)}, metadata={"format": "pt"})
  const std::string_view header =
      R"({"__metadata__":{"format":"pt"},"step":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
      R"("weight":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("bias":{"dtype":"BF16","shape":[],"data_offsets":[16,18]},)"
      R"("empty":{"dtype":"F16","shape":[0,3],"data_offsets":[18,18]}}      )";
  REQUIRE(header.size() == 0x110);
  const std::array<unsigned char, 18> data = {0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                              0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0, 0x80, 0x3f};
  const TempDir dir;
  const fs::path path = dir / "python.safetensors";
  write_file(path, file_bytes(header, {reinterpret_cast<const char*>(data.data()), data.size()}));

  const st::File file = st::File::open(path);
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  CHECK(file.names() == std::vector<std::string>{"step", "weight", "bias", "empty"});
  CHECK(file.to_float("weight") == std::vector<float>{1.0f, -2.5f});
  CHECK(file.to_float("bias") == std::vector<float>{1.0f});
  CHECK(file.info("bias").shape.empty());
  CHECK(file.info("empty").shape == std::vector<std::int64_t>{0, 3});
  CHECK(file.to_float("empty").empty());
  std::int64_t step = 0;
  REQUIRE(file.bytes("step").size() == 8);
  std::memcpy(&step, file.bytes("step").data(), 8);
  CHECK(step == 7);
}

TEST_CASE("safetensors: accepts an unpadded header and a file without tensors") {
  const TempDir dir;
  const fs::path path = dir / "unpadded.safetensors";
  write_file(path, file_bytes(R"({"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", "abc"));
  const st::File file = st::File::open(path);
  CHECK(file.info("x").dtype == st::DType::U8);
  CHECK(file.bytes("x").size() == 3);

  write_file(path, file_bytes("{}", ""));
  CHECK(st::File::open(path).names().empty());
}

TEST_CASE("safetensors: rejects missing, short and non-regular files") {
  const TempDir dir;
  const std::string missing = open_error(dir / "absent.safetensors");
  CHECK(missing.find((dir / "absent.safetensors").string()) != std::string::npos);
  CHECK(missing.find(std::strerror(ENOENT)) != std::string::npos);

  CHECK(open_error(dir.path()).find("not a regular file") != std::string::npos);

  check_rejected("", {"0 bytes", "fewer than the 8-byte"});
  check_rejected("abc", {"3 bytes", "fewer than the 8-byte"});
}

TEST_CASE("safetensors: rejects a header length past the end of the file") {
  std::string contents = file_bytes("{}", "");
  contents[0] = 3;
  check_rejected(contents, {"truncated", "header length 3"});
  contents[7] = '\x80';
  check_rejected(contents, {"truncated"});
}

TEST_CASE("safetensors: rejects a header that is not a JSON object") {
  check_header_rejected("", "", {"not valid JSON"});
  check_header_rejected(R"({"a":)", "", {"not valid JSON"});
  check_header_rejected(std::string_view("{}\0x", 4), "", {"NUL byte"});
  check_header_rejected("[]", "", {"not a JSON object"});
  check_header_rejected(R"("a")", "", {"not a JSON object"});
}

TEST_CASE("safetensors: a hostile header is a FileError, never a crash (numbers beyond double, deep nesting)") {
  // nlohmann reports 1e400 with its own out_of_range; a million levels parse, then overflow the
  // stack when copied or printed. Both must be FileErrors naming the file (muon/io/json.hpp).
  check_header_rejected(R"({"a":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}})", "abcd",
                        {"not valid JSON", "number overflow"});
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  check_header_rejected(R"({"__metadata__":)" + deep + "}", "", {"nests JSON deeper than 64 levels"});
  const std::string at_limit = "{\"__metadata__\":{\"k\":\"v\"},\"x\":" + std::string(62, '[') + std::string(62, ']') + "}";
  check_header_rejected(at_limit, "", {"tensor 'x'"});  // parsed: the entry itself is then refused
}

TEST_CASE("safetensors: rejects malformed tensor entries") {
  check_header_rejected(R"({"w":5})", "", {"tensor 'w'", "not a JSON object"});
  check_header_rejected(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "\"dtype\""});
  check_header_rejected(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "\"dtype\""});
  check_header_rejected(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "\"shape\""});
  check_header_rejected(R"({"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "\"shape\""});
  check_header_rejected(R"({"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "non-integer"});
  check_header_rejected(R"({"w":{"dtype":"F32","shape":[1]}})", "0123",
                        {"tensor 'w'", "missing \"data_offsets\""});
  for (const std::string_view offsets :
       {"[0]", "[0,4,4]", R"([0,"4"])", "[-1,3]", "{}", "[0,4.0]"}) {
    check_header_rejected(
        R"({"w":{"dtype":"F32","shape":[1],"data_offsets":)" + std::string(offsets) + "}}", "0123",
        {"tensor 'w'", "\"data_offsets\"", "not [begin, end]"});
  }
  check_header_rejected(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", "0123",
                        {"tensor 'w'", "end before begin"});
}

TEST_CASE("safetensors: rejects unknown dtypes, negative dims and size mismatches") {
  check_header_rejected(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "unknown dtype \"Q4\""});
  check_header_rejected(R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "negative dimension -1"});
  check_header_rejected(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "span 4 bytes", "[2] of F32 needs 8"});
  check_header_rejected(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "needs 0"});
  check_header_rejected(
      R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", "0123",
      {"tensor 'w'", "too large"});
  check_header_rejected(
      R"({"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,4]}})", "0123",
      {"tensor 'w'", "too large"});
}

TEST_CASE("safetensors: a zero dimension does not hide an overflowing product of the others (issue 14)") {
  // [0, 2^62, 2^62] holds no bytes, but TensorInfo::numel would multiply 2^62 by 2^62 first.
  check_header_rejected(
      R"({"w":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})", "",
      {"tensor 'w'", "\"shape\"", "too large"});
  check_header_rejected(
      R"({"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]}})", "",
      {"tensor 'w'", "\"shape\"", "too large"});
  // Non-zero dims whose product fits stay valid beside a zero.
  const TempDir dir;
  write_file(dir / "empty.safetensors",
             file_bytes(R"({"w":{"dtype":"F32","shape":[0,3037000499,3037000499],"data_offsets":[0,0]}})", ""));
  CHECK(st::File::open(dir / "empty.safetensors").info("w").numel() == 0);
  CHECK_THROWS_AS(st::tensor_f32("w", {0, std::int64_t{1} << 62, std::int64_t{1} << 62}, {}), muon::InvalidArgument);
}

TEST_CASE("safetensors: more than kMaxDims dimensions and a header beyond kMaxHeaderBytes are refused") {
  check_header_rejected(R"({"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", "0123",
                        {"tensor 'w'", "\"shape\" has 9 dimensions", "8 allowed"});
  // The length prefix claims more than the limit; the file holds that many bytes only sparsely.
  const TempDir dir;
  const fs::path path = dir / "huge_header.safetensors";
  const std::uint64_t n = st::kMaxHeaderBytes + 8;
  std::string prefix(8, '\0');
  std::memcpy(prefix.data(), &n, 8);
  write_file(path, prefix);
  fs::resize_file(path, 8 + n);
  const std::string message = open_error(path);
  CHECK(message.find(path.string()) != std::string::npos);
  CHECK(message.find("header length 100000008 exceeds the limit of 100000000 bytes") != std::string::npos);
}

TEST_CASE("safetensors: rejects overlapping, gapped or partial data layouts") {
  check_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                        "0123456789ab", {"tensor 'b'", "overlaps tensor 'a'"});
  check_header_rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                        "0123456789ab", {"tensor 'b'", "hole of 4 bytes at offset 4"});
  check_header_rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "01234567",
                        {"tensor 'a'", "hole of 4 bytes at offset 0"});
  check_header_rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "01234567",
                        {"4 bytes after the last tensor's data", "belong to no tensor"});
  check_header_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "0123",
                        {"truncated: expected 8 bytes of data, file has 4"});
}

TEST_CASE("safetensors: rejects duplicate tensor names and keys") {
  check_header_rejected(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                        R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                        "0", {"duplicate entry 'a'"});
  check_header_rejected(R"({"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})",
                        "0", {"duplicate key 'dtype'"});
  check_header_rejected(R"({"__metadata__":{"k":"1","k":"2"}})", "", {"duplicate key 'k'"});
}

TEST_CASE("safetensors: rejects malformed metadata") {
  check_header_rejected(R"({"__metadata__":["a"]})", "", {"\"__metadata__\" is not a JSON object"});
  check_header_rejected(R"({"__metadata__":{"step":100}})", "", {"'step'", "is not a string"});
}

TEST_CASE("safetensors: a file missing its last byte is reported as truncated") {
  const TempDir dir;
  const fs::path path = dir / "cut.safetensors";
  const std::vector<float> v = {1.0f, 2.0f, 3.0f};
  const std::array tensors = {st::tensor_f32("v", {3}, v)};
  st::write(path, tensors);
  std::string contents = read_file(path);
  contents.pop_back();
  write_file(path, contents);
  const std::string message = open_error(path);
  CHECK(message.find(path.string()) != std::string::npos);
  CHECK(message.find("truncated: expected 12 bytes of data, file has 11") != std::string::npos);
}

TEST_CASE("safetensors: writing over an existing file replaces it") {
  const TempDir dir;
  const fs::path path = dir / "ckpt.safetensors";
  const std::vector<float> old_values = {1.0f, 2.0f, 3.0f, 4.0f};
  const std::vector<float> new_values = {5.0f};
  const std::array old_tensors = {st::tensor_f32("old", {2, 2}, old_values)};
  const std::array new_tensors = {st::tensor_f32("new", {}, new_values)};
  st::write(path, old_tensors, {{"step", "1"}});
  st::write(path, new_tensors, {{"step", "2"}});
  CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  const st::File file = st::File::open(path);
  CHECK(file.names() == std::vector<std::string>{"new"});
  CHECK(file.metadata().at("step") == "2");
  CHECK(file.to_float("new") == new_values);
}

TEST_CASE("safetensors: invalid tensors are rejected before the disk is touched") {
  const TempDir dir;
  const fs::path path = dir / "ckpt.safetensors";
  const std::vector<float> v = {1.0f, 2.0f};
  const std::array good = {st::tensor_f32("v", {2}, v)};
  st::write(path, good);
  const std::string before = read_file(path);

  const auto rejected = [&](std::vector<st::TensorToWrite> tensors, std::string_view fragment) {
    const std::string message = error_of<muon::InvalidArgument>([&] { st::write(path, tensors); });
    CHECK_MESSAGE(message.find(fragment) != std::string::npos, message);
    CHECK(read_file(path) == before);
    CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
  };
  rejected({good[0], good[0]}, "duplicate tensor name 'v'");
  rejected({{"w", st::DType::F32, {3}, bytes_of(v)}}, "tensor 'w': data has 8 bytes");
  rejected({{"w", st::DType::F32, {-2}, bytes_of(v)}}, "tensor 'w'");
  rejected({{"__metadata__", st::DType::F32, {2}, bytes_of(v)}}, "reserved");

  const std::string message =
      error_of<muon::InvalidArgument>([&] { (void)st::tensor_f32("x", {3}, v); });
  CHECK(message.find("tensor 'x'") != std::string::npos);
  CHECK_THROWS_AS((void)st::tensor_f32("x", {-1, -2}, v), muon::InvalidArgument);
}

TEST_CASE("safetensors: a failed write names the path and leaves no temporary file") {
  const TempDir dir;
  write_file(dir / "plain", "not a directory");
  const fs::path below_file = dir / "plain" / "x.safetensors";
  const std::vector<float> v = {1.0f};
  const std::array tensors = {st::tensor_f32("v", {1}, v)};
  std::string message = error_of<muon::FileError>([&] { st::write(below_file, tensors); });
  CHECK(message.find(below_file.string()) != std::string::npos);
  CHECK(message.find(std::strerror(ENOTDIR)) != std::string::npos);
  CHECK(dir.entries() == std::vector<std::string>{"plain"});

  // rename() cannot replace a directory: this fails after the temporary file was fully written.
  const fs::path directory = dir / "target";
  fs::create_directory(directory);
  write_file(directory / "kept", "x");
  message = error_of<muon::FileError>([&] { st::write(directory, tensors); });
  CHECK(message.find(directory.string()) != std::string::npos);
  CHECK(dir.entries() == std::vector<std::string>{"plain", "target"});
  CHECK(fs::exists(directory / "kept"));
}

TEST_CASE("safetensors: a write failing midway leaves the old file intact") {
  const TempDir dir;
  const fs::path path = dir / "ckpt.safetensors";
  const std::vector<float> small = {1.0f};
  const std::array old_tensors = {st::tensor_f32("old", {1}, small)};
  st::write(path, old_tensors);
  const std::string before = read_file(path);

  // A file size limit makes write() fail with EFBIG (SIGXFSZ ignored), even for root.
  const std::vector<float> big(1 << 16, 2.0f);
  const std::array new_tensors = {st::tensor_f32("new", {1 << 16}, big)};
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
  const auto saved_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limited = saved;
  limited.rlim_cur = 4096;
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &limited) == 0);
  std::string message;
  try {
    st::write(path, new_tensors);
  } catch (const muon::FileError& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, saved_handler);

  CHECK(message.find(path.string()) != std::string::npos);
  CHECK(message.find(std::strerror(EFBIG)) != std::string::npos);
  CHECK(read_file(path) == before);
  CHECK(dir.entries() == std::vector<std::string>{"ckpt.safetensors"});
}
