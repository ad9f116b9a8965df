// moonlight/train_options.hpp: the training run's settings, read from the "training" object of a
// run config (examples/moonlight/configs/tiny.json), and their translation into muon::Options.
//
// A run config is {"model": <a Hugging Face DeepseekV3 config.json>, "training": {...}}; every
// training field is optional (defaults below) and an unknown one is an error, so a typo never
// silently trains with a default. The optimizer follows Moonlight (docs/moonlight-architecture.md §9): Muon on
// every matrix with the update scaled to AdamW's RMS, AdamW (0.9, 0.95, 1e-8) on embeddings, the LM
// head and norms, one lr and one weight decay for both; "adamw" trains everything with AdamW.
//
//   auto [config, options] = moonlight::load_run_config("tiny.json");
//   muon::Options o = moonlight::optimizer_options(options);
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>
#include <utility>

#include "moonlight/config.hpp"
#include "muon/backends/eigen.hpp"
#include "muon/error.hpp"
#include "muon/options.hpp"

namespace moonlight {

struct TrainOptions {
  std::int64_t steps = 200;
  std::int64_t seq_len = 64;
  std::int64_t micro_batch = 8;  // sequences per micro-batch on each rank
  std::int64_t grad_accum = 1;   // micro-batches per optimizer step
  std::string optimizer = "muon";  // "muon" (Muon + AdamW, Moonlight's split) or "adamw"
  double lr = 2e-3;
  double weight_decay = 0.1;
  double max_grad_norm = 1.0;  // global L2 norm; 0 turns clipping off
  std::string schedule = "wsd";  // "wsd" (warmup-stable-decay), "cosine" or "constant"
  std::int64_t warmup_steps = 20;
  double decay_fraction = 0.2;  // wsd: the share of the steps spent in the final linear decay
  double final_lr_ratio = 0.1;  // the lr at the end, as a share of `lr` (wsd and cosine)
  double bias_update_rate = 1e-3;  // u of the aux-loss-free bias update; 0 freezes the bias
  double aux_loss_alpha = 0.0;     // α of the sequence-wise balance loss; 0 turns it off
  double val_fraction = 0.05;      // share of the sequences held out for validation
  std::int64_t eval_every = 50;    // steps between validation losses; 0: only at the end
  std::int64_t eval_sequences = 32;  // validation sequences per evaluation (at most all of them)
  std::int64_t checkpoint_every = 0;  // steps between checkpoints; 0: only at the end
  std::int64_t keep_checkpoints = 2;  // the newest this many are kept
  std::uint64_t seed = 1;             // initial weights and data order
  // Newton–Schulz's products: "automatic" (bf16 where the CPU has bf16 instructions, else fp32),
  // "fp32" or "bf16" (muon::NsPrecision).
  std::string ns_precision = "automatic";
};

namespace detail {

// Each field once: its JSON name, how to read it and how to write it.
struct OptionField {
  std::function<void(TrainOptions&, const nlohmann::json&)> read;
  std::function<nlohmann::json(const TrainOptions&)> write;
};

template <class T>
OptionField option_field(const char* name, T TrainOptions::*member) {
  return {[name, member](TrainOptions& o, const nlohmann::json& v) {
            const bool ok = std::is_same_v<T, std::string>    ? v.is_string()
                            : std::is_floating_point_v<T>     ? v.is_number()
                            : std::is_unsigned_v<T>           ? v.is_number_unsigned()
                                                              : v.is_number_integer();
            if (!ok) throw muon::InvalidArgument("training." + std::string(name) + " is " + v.dump() + ", expected " +
                                                 (std::is_same_v<T, std::string> ? "a string" : "a number"));
            o.*member = v.get<T>();
          },
          [member](const TrainOptions& o) { return nlohmann::json(o.*member); }};
}

inline const std::map<std::string, OptionField>& option_fields() {
  static const std::map<std::string, OptionField> fields{
      {"steps", option_field("steps", &TrainOptions::steps)},
      {"seq_len", option_field("seq_len", &TrainOptions::seq_len)},
      {"micro_batch", option_field("micro_batch", &TrainOptions::micro_batch)},
      {"grad_accum", option_field("grad_accum", &TrainOptions::grad_accum)},
      {"optimizer", option_field("optimizer", &TrainOptions::optimizer)},
      {"lr", option_field("lr", &TrainOptions::lr)},
      {"weight_decay", option_field("weight_decay", &TrainOptions::weight_decay)},
      {"max_grad_norm", option_field("max_grad_norm", &TrainOptions::max_grad_norm)},
      {"schedule", option_field("schedule", &TrainOptions::schedule)},
      {"warmup_steps", option_field("warmup_steps", &TrainOptions::warmup_steps)},
      {"decay_fraction", option_field("decay_fraction", &TrainOptions::decay_fraction)},
      {"final_lr_ratio", option_field("final_lr_ratio", &TrainOptions::final_lr_ratio)},
      {"bias_update_rate", option_field("bias_update_rate", &TrainOptions::bias_update_rate)},
      {"aux_loss_alpha", option_field("aux_loss_alpha", &TrainOptions::aux_loss_alpha)},
      {"val_fraction", option_field("val_fraction", &TrainOptions::val_fraction)},
      {"eval_every", option_field("eval_every", &TrainOptions::eval_every)},
      {"eval_sequences", option_field("eval_sequences", &TrainOptions::eval_sequences)},
      {"checkpoint_every", option_field("checkpoint_every", &TrainOptions::checkpoint_every)},
      {"keep_checkpoints", option_field("keep_checkpoints", &TrainOptions::keep_checkpoints)},
      {"seed", option_field("seed", &TrainOptions::seed)},
      {"ns_precision", option_field("ns_precision", &TrainOptions::ns_precision)},
  };
  return fields;
}

}  // namespace detail

// Throws muon::InvalidArgument naming the first field out of range.
inline void validate(const TrainOptions& o) {
  const auto fail = [](const std::string& field, const std::string& what) {
    throw muon::InvalidArgument("training." + field + " " + what);
  };
  for (const auto& [name, value] : {std::pair{"steps", o.steps}, {"seq_len", o.seq_len}, {"micro_batch", o.micro_batch},
                                    {"grad_accum", o.grad_accum}, {"keep_checkpoints", o.keep_checkpoints}}) {
    if (value < 1) fail(name, "must be >= 1, got " + std::to_string(value));
  }
  for (const auto& [name, value] : {std::pair{"warmup_steps", o.warmup_steps}, {"eval_every", o.eval_every},
                                    {"eval_sequences", o.eval_sequences}, {"checkpoint_every", o.checkpoint_every}}) {
    if (value < 0) fail(name, "must be >= 0, got " + std::to_string(value));
  }
  if (o.optimizer != "muon" && o.optimizer != "adamw") fail("optimizer", "is '" + o.optimizer + "'; use \"muon\" or \"adamw\"");
  if (o.schedule != "wsd" && o.schedule != "cosine" && o.schedule != "constant") {
    fail("schedule", "is '" + o.schedule + "'; use \"wsd\", \"cosine\" or \"constant\"");
  }
  if (o.schedule != "constant" && o.warmup_steps >= o.steps) {
    fail("warmup_steps", "(" + std::to_string(o.warmup_steps) + ") must be below training.steps (" +
                             std::to_string(o.steps) + ")");
  }
  if (o.ns_precision != "automatic" && o.ns_precision != "fp32" && o.ns_precision != "bf16") {
    fail("ns_precision", "is '" + o.ns_precision + "'; use \"automatic\", \"fp32\" or \"bf16\"");
  }
  if (!(o.decay_fraction > 0.0 && o.decay_fraction <= 1.0)) fail("decay_fraction", "must be in (0, 1]");
  if (!(o.val_fraction >= 0.0 && o.val_fraction < 1.0)) fail("val_fraction", "must be in [0, 1)");
  for (const auto& [name, value] : {std::pair{"bias_update_rate", o.bias_update_rate}, {"aux_loss_alpha", o.aux_loss_alpha}}) {
    if (!(value >= 0.0) || !std::isfinite(value)) fail(name, "must be finite and >= 0");
  }
  // lr, weight_decay, max_grad_norm and final_lr_ratio are checked by muon::validate(Options).
}

[[nodiscard]] inline TrainOptions train_options_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw muon::InvalidArgument("\"training\" must be a JSON object, got " + j.dump());
  TrainOptions o;
  for (const auto& [key, value] : j.items()) {
    const auto it = detail::option_fields().find(key);
    if (it == detail::option_fields().end()) {
      throw muon::InvalidArgument("training." + key + " is not a training option (see moonlight/train_options.hpp)");
    }
    it->second.read(o, value);
  }
  validate(o);
  return o;
}

[[nodiscard]] inline nlohmann::json to_json(const TrainOptions& o) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [key, field] : detail::option_fields()) j[key] = field.write(o);
  return j;
}

struct RunConfig {
  Config model;
  TrainOptions training;
};

[[nodiscard]] inline RunConfig load_run_config(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw muon::FileError("cannot open run config '" + path.string() + "'; check the --config path");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw muon::FileError("run config '" + path.string() + "' is not valid JSON: " + e.what());
  }
  const auto where = [&](const std::exception& e) { return "run config '" + path.string() + "': " + e.what(); };
  if (!j.is_object() || !j.contains("model")) {
    throw muon::InvalidArgument("run config '" + path.string() +
                                "' needs a \"model\" object (a DeepseekV3 config.json) and may have a \"training\" object");
  }
  for (const auto& [key, value] : j.items()) {
    if (key != "model" && key != "training") {
      throw muon::InvalidArgument("run config '" + path.string() + "': unknown key \"" + key + "\"; use \"model\" and \"training\"");
    }
  }
  try {
    return {Config::from_json(j.at("model")), j.contains("training") ? train_options_from_json(j.at("training")) : TrainOptions{}};
  } catch (const muon::InvalidArgument& e) {  // ConfigError included: the message names the field
    throw muon::InvalidArgument(where(e));
  }
}

// The CPU backend of a run: its Newton–Schulz precision.
[[nodiscard]] inline muon::EigenOptions backend_options(const TrainOptions& o) {
  return {.ns_precision = o.ns_precision == "fp32"   ? muon::NsPrecision::fp32
                          : o.ns_precision == "bf16" ? muon::NsPrecision::bf16
                                                     : muon::NsPrecision::automatic};
}

// The core optimizer's settings for a run: Moonlight's defaults with the run's lr, decay, clipping
// and schedule. The schedule's steps are optimizer steps.
[[nodiscard]] inline muon::Options optimizer_options(const TrainOptions& o) {
  muon::Options options{.lr = o.lr, .weight_decay = o.weight_decay, .max_grad_norm = o.max_grad_norm};
  if (o.schedule == "cosine") {
    options.schedule = muon::WarmupCosine{.warmup_steps = o.warmup_steps, .total_steps = o.steps, .final_ratio = o.final_lr_ratio};
  } else if (o.schedule == "wsd") {
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
