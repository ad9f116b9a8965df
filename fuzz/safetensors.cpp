// Fuzzes muon/io/safetensors.hpp: File::open on any bytes, then every accessor of every tensor.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "muon/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace st = muon::safetensors;
  const auto path = muon::fuzz::write_input("input.safetensors", data, size);
  muon::fuzz::expect_muon_errors([&] {
    const st::File file = st::File::open(path);
    for (const std::string& name : file.names()) {
      const st::TensorInfo& info = file.info(name);
      const std::span<const std::byte> bytes = file.bytes(name);
      // The header check's promise: numel cannot overflow and the bytes are exactly the tensor's.
      if (static_cast<std::uint64_t>(info.numel()) * st::dtype_size(info.dtype) != bytes.size()) __builtin_trap();
      muon::fuzz::expect_muon_errors([&] { (void)file.to_float(name); });
    }
  });
  return 0;
}
