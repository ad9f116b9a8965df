// The `moonlight train` and `moonlight tokenize` subcommands (train_command.hpp declares them;
// tools/moonlight.cpp parses their flags). A translation unit of their own: the trainer's two
// instantiations (one process, MPI) are the heaviest code of the binary, and compile in parallel
// with the rest.
//
//   moonlight train --config configs/tiny.json --data corpus/ --out runs/tiny [--resume]
//   mpirun -np 2 moonlight train ...            # data-parallel over ZeRO-1 (when built with MPI)
//   moonlight tokenize --data corpus/ --out corpus.bin
//
// A run directory gets metrics.jsonl (one JSON line per step), loss.png (the loss curves),
// checkpoints/step-N/ and `latest` (checkpoint.hpp). Without --resume an existing run is never
// overwritten; with it, the run continues from RUN/latest with the run config saved there.
//
// Under mpirun the ranks either all train the same run or all fail, with the message printed:
//   - before the first collective, they agree on the run (rank_agreement.hpp: --resume and its
//     step, the run config after the flags, the corpus fingerprint); a difference makes every
//     rank exit 1 and rank 0 print the first differing field with both values;
//   - any other error is printed by the rank that meets it ("moonlight: rank R of N: ..."), which
//     then calls MPI_Abort: the others may be waiting for it in a collective, where MPI_Finalize
//     would wait forever, so the whole job ends, non-zero.
#include "train_command.hpp"
#include "info_command.hpp"
#include "loss_curves.hpp"
#include "rank_agreement.hpp"

#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <moonlight/checkpoint.hpp>
#include <moonlight/corpus.hpp>
#include <moonlight/generate.hpp>
#include <moonlight/model.hpp>
#include <moonlight/plot.hpp>
#include <moonlight/progress.hpp>
#include <moonlight/tokenizer.hpp>
#include <moonlight/train_options.hpp>
#include <moonlight/trainer.hpp>
#include <moonlight/utf8_stream.hpp>
#include <muon/distributed/self.hpp>
#ifdef MUON_HAS_MPI
#include <muon/distributed/mpi.hpp>
#endif

namespace moonlight::cli {

// The identity of the packed data, so that a resumed run refuses a different corpus.
inline nlohmann::json data_fingerprint(const PackedSequences& data) {
  const std::vector<std::int32_t>& tokens = data.stream().tokens;
  const auto crc = ::crc32(::crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(tokens.data()),
                           static_cast<uInt>(tokens.size() * sizeof(std::int32_t)));
  return {{"tokens", tokens.size()}, {"crc32", crc}, {"seq_len", data.seq_len()}};
}

// Greedy continuation of `prompt` by the current weights, as one line of text.
inline std::string sample_text(const Config& config, const Weights& weights, const Tokenizer& tokenizer,
                               const std::string& prompt, std::int64_t max_new_tokens) {
  const Model model(config, weights);
  KvCache cache(config);
  std::vector<std::int32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) throw muon::InvalidArgument("--sample-prompt encodes to no tokens");
  std::vector<std::int32_t> stops = config.eos_token_ids;
  if (const auto eos = tokenizer.eos_id()) stops.push_back(*eos);
  std::vector<std::int32_t> out;
  generate(model, cache, ids, {.max_new_tokens = max_new_tokens, .stop_ids = stops}, [&](std::int32_t id) {
    if (std::ranges::find(stops, id) == stops.end()) out.push_back(id);
    return true;
  });
  Utf8Stream stream;
  std::string text = stream.push(tokenizer.decode(out)) + stream.flush();
  for (char& c : text)
    if (c == '\n') c = ' ';
  return prompt + text;
}

template <muon::distributed::Communicator C>
int train(const TrainArgs& args, C comm) {
  const bool rank0 = comm.rank() == 0;
  RunConfig run;
  std::optional<VerifiedCheckpoint> checkpoint;
  if (args.resume) {
    if (!args.config.empty()) {
      throw muon::InvalidArgument("--resume takes the run config saved in the checkpoint; drop --config "
                                  "(override single fields with --steps, --lr, ...)");
    }
    checkpoint = open_checkpoint(args.out);
    nlohmann::json saved = checkpoint->state.run;
    saved.merge_patch(args.overrides);
    run = run_config_from_json(saved, (checkpoint->dir / "trainer.json").string());
  } else {
    if (args.config.empty()) throw muon::InvalidArgument("--config is required for a new run (or pass --resume)");
    if (std::filesystem::exists(args.out / "latest")) {
      throw muon::InvalidArgument("--out '" + args.out.string() +
                                  "' already holds a run; pass --resume to continue it, or choose another --out");
    }
    nlohmann::json config = read_run_config(args.config);
    config.merge_patch(args.overrides);
    run = run_config_from_json(config, args.config.string());
  }

  const Tokenizer tokenizer = Tokenizer::load(args.tokenizer);
  if (tokenizer.vocab_size() > run.model.vocab_size) {
    throw muon::InvalidArgument("tokenizer '" + args.tokenizer.string() + "' has " + std::to_string(tokenizer.vocab_size()) +
                                " ids but the model's vocab_size is " + std::to_string(run.model.vocab_size));
  }
  const PackedSequences data(read_corpus(expand_corpus_paths(args.data), tokenizer, {args.document_separator}),
                             run.training.seq_len, run.training.val_fraction);
  const nlohmann::json fingerprint = data_fingerprint(data);
  if (checkpoint && checkpoint->state.data != fingerprint) {
    throw muon::InvalidArgument("--data differs from the corpus run '" + args.out.string() + "' was trained on (" +
                                checkpoint->state.data.dump() + " vs " + fingerprint.dump() +
                                "); pass the same files and --doc-separator to resume");
  }
  // Everything above is this rank's own work; the trainer's constructor is the first collective.
  agree_on_run(comm, run_facts(args.resume, checkpoint ? nlohmann::json(checkpoint->step) : nlohmann::json(),
                               to_json(run), fingerprint));
  if (rank0) {
    std::printf("corpus: %lld documents, %lld tokens -> %lld training + %lld validation sequences of %lld tokens\n",
                static_cast<long long>(data.stream().documents), static_cast<long long>(data.stream().tokens.size()),
                static_cast<long long>(data.train_count()), static_cast<long long>(data.val_count()),
                static_cast<long long>(data.seq_len()));
  }

  Trainer<C> trainer(run, data, args.tokenizer, args.out, std::move(comm), fingerprint);
  if (checkpoint) trainer.resume(*checkpoint);
  const TrainOptions& o = trainer.run().training;
  if (rank0) {
    std::printf("model: %s; %s, lr %.3g, %lld steps of %lld tokens%s\n",
                parameter_summary(count_parameters(trainer.run().model)).c_str(),
                std::string(muon::enum_name(o.optimizer)).c_str(), trainer.run().muon.lr,
                static_cast<long long>(o.steps), static_cast<long long>(trainer.tokens_per_step()),
                checkpoint ? (", resumed at step " + std::to_string(trainer.step())).c_str() : "");
    if (!args.sample_prompt.empty()) {
      std::printf("sample before training: %s\n",
                  sample_text(run.model, trainer.weights(), tokenizer, args.sample_prompt, args.sample_tokens).c_str());
    }
    std::fflush(stdout);
  }
  ProgressBar progress(stderr, /*plain_every=*/10);
  const std::int64_t first_step = trainer.step();
  double optimizer_seconds = 0.0, step_seconds = 0.0;
  trainer.train([&](const StepMetrics& m) {
    optimizer_seconds += m.optimizer_seconds;
    step_seconds += m.step_seconds;
    if (!rank0) return;
    progress.update({.step = m.step, .total_steps = m.total_steps, .loss = m.loss, .tokens_per_s = m.tokens_per_second,
                     .lr = m.lr, .elapsed_s = step_seconds, .first_step = first_step,
                     .max_logit = m.max_logits.empty() ? std::nullopt : std::optional(MaxLogits{m.max_logits}.overall()),
                     .qk_clipped = m.qk_clipped});
    if (m.val_loss) {
      progress.note("step " + std::to_string(m.step) + ": validation loss " + std::to_string(*m.val_loss) +
                    ", expert load max/mean " + std::to_string(m.load_imbalance));
      plot_curves(args.out / "loss.png", loss_curves(args.out / "metrics.jsonl", std::string(muon::enum_name(o.optimizer))),
                       {.title = "Moonlight training loss", .x_label = "tokens", .y_label = "cross-entropy (nats)"});
    }
  });
  progress.finish();
  if (rank0) {
    std::printf("trained %lld steps: optimizer %.1f%% of step time; checkpoint %s; metrics %s; plot %s\n",
                static_cast<long long>(trainer.step()), step_seconds > 0 ? 100.0 * optimizer_seconds / step_seconds : 0.0,
                (args.out / "latest").c_str(), (args.out / "metrics.jsonl").c_str(), (args.out / "loss.png").c_str());
    if (!args.sample_prompt.empty()) {
      std::printf("sample after training:  %s\n",
                  sample_text(run.model, trainer.weights(), tokenizer, args.sample_prompt, args.sample_tokens).c_str());
    }
  }
  return 0;
}

#ifdef MUON_HAS_MPI
// A failure on one rank: its message, then the whole job ends. The other ranks may be waiting for
// this one in a collective, so MPI_Finalize (a collective too) would hang; MPI_Abort ends them all.
[[noreturn]] void abort_ranks(int rank, int size, const char* message) {
  std::fflush(stdout);
  std::fprintf(stderr, "moonlight: rank %d of %d: %s\n", rank, size, message);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();  // MPI_Abort does not return
}
#endif

// Runs `train` on MPI when started by mpirun (and built with MPI), else in this process alone.
int train_dispatch(const TrainArgs& args, int& argc, char**& argv) {
#ifdef MUON_HAS_MPI
  if (std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr) {
    const muon::distributed::MpiEnvironment mpi(argc, argv);
    muon::distributed::MpiCommunicator comm;
    const int rank = comm.rank(), size = comm.size();
    try {
      return train(args, std::move(comm));
    } catch (const RanksDisagree& e) {  // every rank threw it at the same point: none waits, all end normally
      if (rank == 0) std::fprintf(stderr, "moonlight: %s\n", e.what());
      return 1;
    } catch (const std::exception& e) {
      abort_ranks(rank, size, e.what());
    } catch (...) {
      abort_ranks(rank, size, "an exception that is not a std::exception");
    }
  }
#endif
  (void)argc;
  (void)argv;
  return train(args, muon::distributed::SelfCommunicator{});
}

int tokenize(const std::filesystem::path& tokenizer_file, const std::vector<std::filesystem::path>& data,
                    const std::string& separator, const std::filesystem::path& out) {
  const Tokenizer tokenizer = Tokenizer::load(tokenizer_file);
  const TokenStream stream = read_corpus(expand_corpus_paths(data), tokenizer, {separator});
  write_shard(out, stream.tokens);
  std::printf("wrote %lld tokens (%lld documents, %lld bytes of text) to %s\n",
              static_cast<long long>(stream.tokens.size()), static_cast<long long>(stream.documents),
              static_cast<long long>(stream.text_bytes), out.c_str());
  return 0;
}

}  // namespace moonlight::cli
