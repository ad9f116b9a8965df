// Fuzzes moonlight/checkpoint.hpp's open_checkpoint on a directory named step-00000003. The first
// byte of the input says what the rest is:
//   0: manifest.json as is (its own CRC-32 rarely matches: that check is what gets fuzzed);
//   1: the manifest's content, sealed here with its correct CRC-32, so that the file list, the
//      names, sizes and steps behind the CRC are fuzzed;
//   2: trainer.json, listed here in a correctly sealed manifest, so that its fields are fuzzed.
// Modes 0 and 1 pair the manifest with a valid trainer.json of step 3.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "fuzz_support.hpp"
#include "moonlight/checkpoint.hpp"
#include "muon/io/json.hpp"

namespace {

const std::filesystem::path& checkpoint_dir() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path d = muon::fuzz::scratch_dir() / "step-00000003";
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

void write(const std::filesystem::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) __builtin_trap();  // the harness itself failed, not the parser
}

// A manifest listing trainer.json as it is on disk, with the correct CRC of its own.
std::string sealed_manifest(nlohmann::json manifest) {
  const moonlight::detail::FileDigest d = moonlight::detail::digest_file(checkpoint_dir() / moonlight::kTrainerStateFile);
  if (!manifest.contains("files")) manifest["files"][moonlight::kTrainerStateFile] = {{"bytes", d.size}, {"crc32", d.crc32}};
  manifest["crc32"] = moonlight::detail::crc32_of(moonlight::detail::manifest_body(manifest));
  return manifest.dump();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::filesystem::path& dir = checkpoint_dir();
  const std::string valid_trainer = nlohmann::json{{"format", moonlight::kCheckpointFormat}, {"step", 3}, {"tokens", 96},
                                                   {"data", nlohmann::json::object()}, {"run", nlohmann::json::object()}}.dump();
  std::string manifest(rest);
  switch (data[0] % 3) {
    case 0:
      write(dir / moonlight::kTrainerStateFile, valid_trainer);
      break;
    case 1:
      write(dir / moonlight::kTrainerStateFile, valid_trainer);
      try {
        const nlohmann::json parsed = muon::io::parse_json(rest, "fuzz input");
        if (parsed.is_object()) manifest = sealed_manifest(parsed);
      } catch (const muon::Error&) {
      }
      break;
    default:
      write(dir / moonlight::kTrainerStateFile, rest);
      manifest = sealed_manifest({{"format", moonlight::kCheckpointFormat}, {"step", 3}});
  }
  write(dir / moonlight::kManifestFile, manifest);
  muon::fuzz::expect_muon_errors([&] {
    const moonlight::VerifiedCheckpoint c = moonlight::open_checkpoint(dir);
    if (c.step != 3) __builtin_trap();  // the directory's name fixes the step
  });
  return 0;
}
