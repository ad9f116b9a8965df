// moonlight/train_options.hpp: a training run's settings: the run config's "training" and
// "muon" objects (examples/moonlight/configs/tiny.json), through their field tables.
//
// A run config is {"model": <a Hugging Face DeepseekV3 config.json>, "training": {...},
// "muon": {...}}. "training" holds the run's own settings (TrainOptions, below); "muon" holds
// muon::Options, by the core's own field names (muon/options.hpp), except the lr schedule: the
// run derives it from training.steps and training's schedule shape, so that a longer run
// stretches its schedule. Every field is optional (Moonlight's defaults: Muon on every matrix
// with the update scaled to AdamW's RMS, AdamW (0.9, 0.95, 1e-8) on embeddings, the LM head and
// norms, one lr and one weight decay for both; docs/moonlight-architecture.md §9), and an unknown
// one is an error naming it, so a typo never silently trains with a default. Both tables also
// make the `moonlight train` flags (tools/schema_flags.hpp).
//
//   const moonlight::RunConfig run = moonlight::load_run_config("tiny.json");
//   muon::Options o = moonlight::optimizer_options(run);
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <utility>

#include "moonlight/config.hpp"
#include "muon/backends/eigen.hpp"
#include "muon/error.hpp"
#include "muon/io/json.hpp"
#include "muon/options.hpp"
#include "muon/options_json.hpp"
#include "muon/schema.hpp"

namespace moonlight {

// Which parameters Muon takes: Moonlight's split (matrices to Muon, the rest to AdamW), or none.
// `normuon` is Moonlight's split with NorMuon on (muon.normuon.enabled), for a study's one flag.
enum class OptimizerSplit { muon, adamw, normuon };
// The lr schedule's shape over training.steps.
enum class LrShape { wsd, cosine, constant };

// QK-clip (qk_clip.hpp): after each step, every attention head whose largest logit of the step
// exceeded tau is rescaled so that it would have been tau. Off by default; tau is Kimi K2's.
struct QkClipOptions {
  bool enabled = false;
  double tau = 100.0;
};

struct TrainOptions {
  std::int64_t steps = 200;
  std::int64_t seq_len = 64;
  std::int64_t micro_batch = 8;  // sequences per micro-batch on each rank
  std::int64_t grad_accum = 1;   // micro-batches per optimizer step
  OptimizerSplit optimizer = OptimizerSplit::muon;  // "adamw" trains everything with AdamW (the baseline), "normuon" turns NorMuon on
  LrShape schedule = LrShape::wsd;  // warmup-stable-decay, Moonlight's warmup then cosine, or constant
  std::int64_t warmup_steps = 20;
  double decay_fraction = 0.2;  // wsd: the share of the steps spent in the final linear decay
  double final_lr_ratio = 0.1;  // the lr at the end, as a share of muon.lr (wsd and cosine)
  double bias_update_rate = 1e-3;  // u of the aux-loss-free bias update; 0 freezes the bias
  double aux_loss_alpha = 0.0;     // α of the sequence-wise balance loss; 0 turns it off
  double val_fraction = 0.05;      // share of the sequences held out for validation
  std::int64_t eval_every = 50;    // steps between validation losses; 0: only at the end
  std::int64_t eval_sequences = 32;  // validation sequences per evaluation (at most all of them)
  std::int64_t checkpoint_every = 0;  // steps between checkpoints; 0: only at the end
  std::int64_t keep_checkpoints = 2;  // the newest this many are kept
  std::uint64_t seed = 1;             // initial weights and data order
  // Newton–Schulz's products: bf16 where the CPU has bf16 instructions, else fp32 (automatic).
  muon::NsPrecision ns_precision = muon::NsPrecision::automatic;
  QkClipOptions qk_clip{};
};

// The optimizer's defaults for a Moonlight run, where they differ from muon::Options's.
[[nodiscard]] inline muon::Options default_run_optimizer() {
  return {.lr = 2e-3, .weight_decay = 0.1, .max_grad_norm = 1.0};
}

struct RunConfig {
  Config model;
  TrainOptions training{};
  muon::Options muon = default_run_optimizer();  // its schedule is derived (optimizer_options)
};

}  // namespace moonlight

template <>
struct muon::EnumNames<moonlight::OptimizerSplit> {
  static constexpr std::array names{std::pair{moonlight::OptimizerSplit::muon, "muon"},
                                    std::pair{moonlight::OptimizerSplit::adamw, "adamw"},
                                    std::pair{moonlight::OptimizerSplit::normuon, "normuon"}};
};
template <>
struct muon::EnumNames<moonlight::LrShape> {
  static constexpr std::array names{std::pair{moonlight::LrShape::wsd, "wsd"}, std::pair{moonlight::LrShape::cosine, "cosine"},
                                    std::pair{moonlight::LrShape::constant, "constant"}};
};
template <>
struct muon::Schema<moonlight::QkClipOptions> {
  using T = moonlight::QkClipOptions;
  static constexpr auto fields = std::tuple{field("enabled", &T::enabled), field("tau", &T::tau, kPositive)};
};
template <>
struct muon::Schema<moonlight::TrainOptions> {
  using T = moonlight::TrainOptions;
  static constexpr auto fields = std::tuple{
      field("steps", &T::steps, Limits{.min = 1}),
      field("seq_len", &T::seq_len, Limits{.min = 1}),
      field("micro_batch", &T::micro_batch, Limits{.min = 1}),
      field("grad_accum", &T::grad_accum, Limits{.min = 1}),
      field("optimizer", &T::optimizer),
      field("schedule", &T::schedule),
      field("warmup_steps", &T::warmup_steps, kNonNegative),
      field("decay_fraction", &T::decay_fraction, Limits{.min = 0.0, .max = 1.0, .min_open = true}),
      field("final_lr_ratio", &T::final_lr_ratio, kFraction),
      field("bias_update_rate", &T::bias_update_rate, kNonNegative),
      field("aux_loss_alpha", &T::aux_loss_alpha, kNonNegative),
      field("val_fraction", &T::val_fraction, kUnitInterval),
      field("eval_every", &T::eval_every, kNonNegative),
      field("eval_sequences", &T::eval_sequences, kNonNegative),
      field("checkpoint_every", &T::checkpoint_every, kNonNegative),
      field("keep_checkpoints", &T::keep_checkpoints, Limits{.min = 1}),
      field("seed", &T::seed),
      field("ns_precision", &T::ns_precision),
      field("qk_clip", &T::qk_clip)};
  static void check(const T& o, const std::string& path) {
    if (o.schedule != moonlight::LrShape::constant && o.warmup_steps >= o.steps)
      throw InvalidArgument(path + ".warmup_steps (" + std::to_string(o.warmup_steps) + ") must be below " + path +
                            ".steps (" + std::to_string(o.steps) + ")");
  }
};

namespace moonlight {

// The run config's sections, by the names its JSON uses.
[[nodiscard]] inline nlohmann::json to_json(const RunConfig& run) {
  nlohmann::json muon = muon::to_json(run.muon);
  muon.erase("schedule");
  return {{"model", run.model.json}, {"training", muon::to_json(run.training)}, {"muon", std::move(muon)}};
}

// Reads a run config's JSON; `source` names it in errors (a file, or a checkpoint).
[[nodiscard]] inline RunConfig run_config_from_json(const nlohmann::json& j, const std::string& source) {
  const auto fail = [&](const std::string& what) { throw muon::InvalidArgument("run config '" + source + "': " + what); };
  if (!j.is_object() || !j.contains("model"))
    fail("needs a \"model\" object (a DeepseekV3 config.json) and may have \"training\" and \"muon\" objects");
  for (const auto& [key, value] : j.items())
    if (key != "model" && key != "training" && key != "muon")
      fail("unknown key \"" + key + "\"; use \"model\", \"training\" and \"muon\"");
  if (j.contains("muon") && j.at("muon").is_object() && j.at("muon").contains("schedule"))
    fail("muon.schedule is derived from training.schedule, training.warmup_steps, training.decay_fraction and "
         "training.final_lr_ratio over training.steps; set those instead");
  try {
    RunConfig run{Config::from_json(j.at("model"))};
    if (j.contains("training"))
      run.training = muon::from_json<TrainOptions>(j.at("training"), "training", muon::MissingFields::keep);
    if (j.contains("muon"))
      run.muon = muon::from_json<muon::Options>(j.at("muon"), "muon", muon::MissingFields::keep, default_run_optimizer());
    return run;
  } catch (const muon::InvalidArgument& e) {  // ConfigError included: the message names the field
    fail(e.what());
  }
  return {};
}

// A run config file's JSON, unchecked (the command line patches it before run_config_from_json).
[[nodiscard]] inline nlohmann::json read_run_config(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path))
    throw muon::FileError("cannot open run config '" + path.string() + "'; check the --config path");
  return muon::io::read_json_file(path, "run config '" + path.string() + "'");
}

[[nodiscard]] inline RunConfig load_run_config(const std::filesystem::path& path) {
  return run_config_from_json(read_run_config(path), path.string());
}

// The CPU backend of a run: its Newton–Schulz precision.
[[nodiscard]] inline muon::EigenOptions backend_options(const TrainOptions& o) { return {.ns_precision = o.ns_precision}; }

// The core optimizer's settings for a run: run.muon with the schedule derived from training (its
// steps are optimizer steps).
[[nodiscard]] inline muon::Options optimizer_options(const RunConfig& run) {
  const TrainOptions& o = run.training;
  muon::Options options = run.muon;
  if (o.optimizer == OptimizerSplit::normuon) options.muon.normuon.enabled = true;
  options.schedule = muon::ConstantLr{};
  if (o.schedule == LrShape::cosine) {
    options.schedule = muon::WarmupCosine{.warmup_steps = o.warmup_steps, .total_steps = o.steps, .final_ratio = o.final_lr_ratio};
  } else if (o.schedule == LrShape::wsd) {
    const auto decay = std::max<std::int64_t>(1, std::llround(o.decay_fraction * static_cast<double>(o.steps)));
    options.schedule = muon::WarmupStableDecay{.warmup_steps = o.warmup_steps,
                                               .stable_steps = std::max<std::int64_t>(0, o.steps - o.warmup_steps - decay),
                                               .decay_steps = decay,
                                               .final_ratio = o.final_lr_ratio};
  }
  muon::validate(options);
  return options;
}

}  // namespace moonlight
