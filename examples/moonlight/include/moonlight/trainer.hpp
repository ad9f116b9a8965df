// moonlight/trainer.hpp: the training loop of the Moonlight model with muon's hybrid optimizer.
//
// One step, on every data-parallel rank:
//   for each of grad_accum micro-batches: micro_batch sequences, split over the OpenMP threads,
//     each thread adding the gradients of its sequences into its own buffer (backward.hpp; with
//     training.aux_loss_alpha > 0 the objective includes the sequence-wise balance loss)
//   → the buffers summed in thread order and averaged (deterministic for a given thread count)
//   → the ZeRO-1 optimizer (muon/distributed/zero1.hpp): mean over ranks, clipping, Muon on matrices
//     and AdamW on the rest, the lr schedule
//   → the aux-loss-free bias update from the expert loads summed over all ranks (balancing.hpp)
//   → with training.qk_clip.enabled, QK-clip (qk_clip.hpp) of every head whose largest attention
//     logit of the step (max over threads, micro-batches and ranks) exceeded τ.
// With one process the communicator is muon::distributed::SelfCommunicator; under mpirun it is MPI, and
// each rank takes its own slice of every global batch (micro_batch × grad_accum × ranks sequences).
// The k-th sequence of the run is fixed by the seed (corpus.hpp), so resuming from a checkpoint
// (checkpoint.hpp) continues exactly as an uninterrupted run would, bit for bit.
//
// Rank 0 appends one JSON line per step to RUN/metrics.jsonl (metrics_log.hpp) and writes the
// checkpoints.
//
//   moonlight::Trainer trainer(run, data, tokenizer_file, run_dir, muon::distributed::SelfCommunicator{});
//   trainer.train([](const moonlight::StepMetrics& m) { ... });
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "moonlight/backward.hpp"
#include "moonlight/balancing.hpp"
#include "moonlight/checkpoint.hpp"
#include "moonlight/config.hpp"
#include "moonlight/corpus.hpp"
#include "moonlight/metrics_log.hpp"
#include "moonlight/qk_clip.hpp"
#include "moonlight/train_options.hpp"
#include "moonlight/weights.hpp"
#include "muon/backends/eigen.hpp"
#include "muon/cpu/elementwise.hpp"
#include "muon/distributed/communicator.hpp"
#include "muon/distributed/zero1.hpp"

namespace moonlight {

// Hugging Face's DeepseekV3 initialisation: N(0, initializer_range) for every matrix, the
// embedding and the head; ones for the norms; zeros for the router's correction bias.
inline void initialize_weights(Weights& w, const Config& c, std::uint64_t seed) {
  const double std_dev = c.json.value("initializer_range", 0.02);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, static_cast<float>(std_dev));
  for (const TensorSpec& t : w.tensors()) {
    const std::span<float> v = w.values(t.name);
    switch (t.role) {
      case muon::Role::norm: std::ranges::fill(v, 1.0f); break;
      case muon::Role::bias: std::ranges::fill(v, 0.0f); break;
      default: for (float& x : v) x = normal(rng);
    }
  }
}

// The optimizer's table: every weight except the routers' e_score_correction_bias, which the
// balancing rule moves instead (it gets no gradient, and AdamW's decay would shrink it).
// OptimizerSplit::adamw puts every tensor under AdamW, for the baseline.
inline std::vector<muon::Parameter> training_parameters(Weights& w, std::span<const float> grads,
                                                        OptimizerSplit optimizer) {
  std::vector<muon::Parameter> table = w.parameter_table(grads);
  std::erase_if(table, [](const muon::Parameter& p) { return p.name.ends_with(".e_score_correction_bias"); });
  if (optimizer == OptimizerSplit::adamw)
    for (muon::Parameter& p : table) p.rule = muon::Rule::adamw;
  return table;
}

struct StepMetrics {
  std::int64_t step = 0;  // completed optimizer steps
  std::int64_t total_steps = 0;
  std::int64_t tokens = 0;  // training tokens seen, over all ranks
  double loss = 0.0;        // mean next-token cross-entropy of the step's batch
  double aux_loss = 0.0;    // α·L_Bal summed over MoE layers (0 when α is 0)
  double lr = 0.0;
  double grad_norm = 0.0;   // before clipping
  double step_seconds = 0.0;
  double optimizer_seconds = 0.0;  // of step_seconds, in the optimizer
  double tokens_per_second = 0.0;
  double load_imbalance = 0.0;  // max over experts of tokens / mean tokens, averaged over MoE layers
  std::optional<double> val_loss{};
  std::vector<std::vector<std::int64_t>> expert_load{};  // [MoE layer][expert], on evaluation steps
  std::vector<std::vector<double>> max_logits{};  // [layer][head]: the step's largest attention logits
  std::optional<std::int64_t> qk_clipped{};        // heads QK-clip rescaled (with training.qk_clip.enabled)
};

[[nodiscard]] inline nlohmann::json to_json(const StepMetrics& m) {
  nlohmann::json j{{"step", m.step},
                   {"tokens", m.tokens},
                   {"loss", m.loss},
                   {"lr", m.lr},
                   {"grad_norm", m.grad_norm},
                   {"step_s", m.step_seconds},
                   {"optimizer_s", m.optimizer_seconds},
                   {"tokens_per_s", m.tokens_per_second},
                   {"load_imbalance", m.load_imbalance}};
  if (m.aux_loss != 0.0) j["aux_loss"] = m.aux_loss;
  if (m.val_loss) j["val_loss"] = *m.val_loss;
  if (!m.expert_load.empty()) j["expert_load"] = m.expert_load;
  if (!m.max_logits.empty()) j["max_logits"] = m.max_logits;
  if (m.qk_clipped) j["qk_clipped"] = *m.qk_clipped;
  return j;
}

template <muon::distributed::Communicator C>
class Trainer {
 public:
  // A fresh run: weights initialised from training.seed. `data_identity` goes into every
  // checkpoint, so that a resume can check it is given the same corpus.
  Trainer(RunConfig run, const PackedSequences& data, std::filesystem::path tokenizer_file,
          std::filesystem::path run_dir, C comm, nlohmann::json data_identity = nlohmann::json::object())
      : run_(std::move(run)),
        data_(data),
        data_identity_(std::move(data_identity)),
        tokenizer_bytes_(read_tokenizer(tokenizer_file)),
        run_dir_(std::move(run_dir)),
        weights_(run_.model),
        grads_(weights_.data().size(), 0.0f),
        optimizer_(training_parameters(weights_, grads_, run_.training.optimizer),
                   optimizer_options(run_), std::move(comm),
                   muon::EigenBackend(backend_options(run_.training))),
        order_(data.train_count(), run_.training.seed) {
    initialize_weights(weights_, run_.model, run_.training.seed);
    if (data.seq_len() != run_.training.seq_len) {
      throw muon::InvalidArgument("the data is packed in sequences of " + std::to_string(data.seq_len()) +
                                  " tokens, training.seq_len is " + std::to_string(run_.training.seq_len));
    }
  }
  Trainer(const Trainer&) = delete;  // the optimizer points into weights_ and grads_
  Trainer& operator=(const Trainer&) = delete;

  // Continues from a verified checkpoint of this model: weights, optimizer state, step. The
  // hyper-parameters are this trainer's (the saved ones, unless the caller changed them, e.g. more
  // steps and so a longer schedule).
  void resume(const VerifiedCheckpoint& checkpoint) {
    const Weights loaded = Weights::load(checkpoint.dir, run_.model);
    optimizer_.load(checkpoint.dir / "optimizer.safetensors");
    optimizer_.set_options(optimizer_options(run_));
    if (step() != checkpoint.step)
      throw muon::StateMismatch("checkpoint '" + checkpoint.dir.string() + "' is of step " +
                                std::to_string(checkpoint.step) + " but its optimizer state has taken " +
                                std::to_string(step()) + " steps");
    std::ranges::copy(loaded.data(), weights_.data().begin());
    tokens_ = checkpoint.state.tokens;
    resumed_ = true;
  }

  // Trains up to training.steps, calling on_step after every step (on every rank).
  void train(const std::function<void(const StepMetrics&)>& on_step) {
    const TrainOptions& o = run_.training;
    std::filesystem::create_directories(run_dir_);
    const std::filesystem::path metrics_file = run_dir_ / "metrics.jsonl";
    if (rank0() && !metrics_)
      metrics_.emplace(resumed_ ? MetricsLog::resume(metrics_file, step()) : MetricsLog::fresh(metrics_file));
    while (step() < o.steps) {
      StepMetrics m = train_step();
      const bool last = step() == o.steps;
      if (last || (o.eval_every > 0 && step() % o.eval_every == 0)) {
        m.val_loss = evaluate();
        m.expert_load = moe_loads(load_);
      }
      // The line before the checkpoint, made durable: a checkpoint never outruns its metrics.
      if (rank0()) metrics_->append(to_json(m));
      if (last || (o.checkpoint_every > 0 && step() % o.checkpoint_every == 0)) {
        if (rank0()) metrics_->sync();
        save_checkpoint();
      }
      on_step(m);
    }
  }

  // Mean cross-entropy over the first eval_sequences validation sequences (all ranks' share);
  // nothing when no sequence is held out.
  std::optional<double> evaluate() {
    const std::int64_t n = std::min(run_.training.eval_sequences, data_.val_count());
    if (n == 0) return std::nullopt;
    std::vector<std::span<const std::int32_t>> sequences;
    for (std::int64_t i = rank(); i < n; i += world()) sequences.push_back(data_.val(i));
    // Forward only; one loss per sequence, added in order: the same sum for any thread count.
    std::vector<double> losses(sequences.size());
    const std::span<const float> values = weights_.data();
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < sequences.size(); ++i) {
      const std::span<const std::int32_t> s = sequences[i];
      losses[i] = forward_loss<float>(run_.model, weights_, values, s.first(s.size() - 1), s.subspan(1));
    }
    double sums[] = {0.0};
    for (const double l : losses) sums[0] += l;
    optimizer_.communicator().all_reduce(std::span<double>(sums), muon::distributed::ReduceOp::sum);
    return sums[0] / static_cast<double>(n);
  }

  // One optimizer step on the next batch, without evaluation, checkpoint or metrics line (what
  // train() adds); for benchmarks and custom loops.
  StepMetrics train_step() {
    const TrainOptions& o = run_.training;
    const auto start = std::chrono::steady_clock::now();
    load_ = empty_load();
    MaxLogits max_logits = MaxLogits::empty(run_.model);
    PassResult pass;
    for (std::int64_t a = 0; a < o.grad_accum; ++a) {
      std::vector<std::span<const std::int32_t>> sequences;
      const std::int64_t first = ((step() * o.grad_accum + a) * world() + rank()) * o.micro_batch;
      for (std::int64_t j = 0; j < o.micro_batch; ++j) sequences.push_back(data_.train(order_.at(first + j)));
      const PassResult r = run_sequences(sequences, /*first_of_step=*/a == 0, load_, max_logits);
      pass.loss_sum += r.loss_sum;
      pass.aux_sum += r.aux_sum;
    }
    const auto local = static_cast<double>(o.micro_batch * o.grad_accum);
    reduce_gradients(static_cast<float>(1.0 / local));

    // Every rank must see the same losses and loads: the bias update is replicated.
    double sums[] = {pass.loss_sum / local, pass.aux_sum / local};
    optimizer_.communicator().all_reduce(std::span<double>(sums), muon::distributed::ReduceOp::avg);
    std::vector<std::int64_t> counts = flatten(load_);
    optimizer_.communicator().all_reduce(std::span<std::int64_t>(counts), muon::distributed::ReduceOp::sum);
    unflatten(counts, load_);
    // Every rank clips by the same maxima, so the all-gathered weights stay equal bit for bit.
    std::vector<double> maxima = max_logits.flat();
    optimizer_.communicator().all_reduce(std::span<double>(maxima), muon::distributed::ReduceOp::max);
    max_logits.assign_flat(maxima);

    const auto before_optimizer = std::chrono::steady_clock::now();
    const muon::StepReport report = optimizer_.step();
    const auto after_optimizer = std::chrono::steady_clock::now();
    std::optional<std::int64_t> clipped;
    // On the full weights every rank holds after the step's all-gather; a skipped step changes nothing.
    if (o.qk_clip.enabled)
      clipped = report.skipped ? 0 : qk_clip(optimizer_.backend(), weights_, run_.model, max_logits, o.qk_clip.tau);
    if (o.bias_update_rate > 0.0) update_expert_bias(weights_, run_.model, load_, o.bias_update_rate);
    const std::int64_t tokens = tokens_per_step();
    tokens_ += tokens;

    const std::chrono::duration<double> total = std::chrono::steady_clock::now() - start;
    const std::chrono::duration<double> in_optimizer = after_optimizer - before_optimizer;
    StepMetrics m{.step = step(),
                  .total_steps = o.steps,
                  .tokens = tokens_,
                  .loss = sums[0],
                  .aux_loss = sums[1],
                  .lr = report.lr,
                  .grad_norm = report.grad_norm,
                  .step_seconds = total.count(),
                  .optimizer_seconds = in_optimizer.count(),
                  .tokens_per_second = static_cast<double>(tokens) / total.count(),
                  .load_imbalance = load_imbalance(load_),
                  .max_logits = std::move(max_logits.heads),
                  .qk_clipped = clipped};
    return m;
  }

  // Steps taken, skipped ones included (a skipped step still consumes its batch): the optimizer's
  // counts are the one step counter.
  [[nodiscard]] std::int64_t step() const { return optimizer_.step_count() + optimizer_.skipped_steps(); }
  [[nodiscard]] std::int64_t tokens_per_step() {
    const TrainOptions& o = run_.training;
    return o.micro_batch * o.grad_accum * world() * o.seq_len;
  }
  [[nodiscard]] const Weights& weights() const { return weights_; }
  [[nodiscard]] const RunConfig& run() const { return run_; }

 private:
  struct PassResult {
    double loss_sum = 0.0;
    double aux_sum = 0.0;
  };

  [[nodiscard]] int rank() { return optimizer_.communicator().rank(); }
  [[nodiscard]] int world() { return optimizer_.communicator().size(); }
  [[nodiscard]] bool rank0() { return rank() == 0; }

  // Forward and backward over `sequences` (of equal length), each thread taking a contiguous share
  // in one pass (stacked, so that its products have that many more rows) and adding its gradients
  // into its own buffer (grads_ for thread 0), which it zeroes first on the step's first
  // micro-batch; expert loads land in `load`, the largest attention logits in `max_logits`.
  PassResult run_sequences(std::span<const std::span<const std::int32_t>> sequences, bool first_of_step,
                           ExpertLoad& load, MaxLogits& max_logits) {
    int threads = 1;
#ifdef _OPENMP
    threads = std::max(1, std::min<int>(omp_get_max_threads(), static_cast<int>(sequences.size())));
#endif
    for (const std::span<const std::int32_t> s : sequences)
      if (s.size() != sequences.front().size())
        throw muon::InvalidArgument("Trainer: the sequences of a micro-batch must have equal lengths");
    thread_grads_.resize(static_cast<std::size_t>(threads - 1));
    for (std::vector<float>& g : thread_grads_) g.resize(grads_.size());
    std::vector<ExpertLoad> loads(static_cast<std::size_t>(threads), empty_load());
    std::vector<PassResult> results(static_cast<std::size_t>(threads));
    std::vector<MaxLogits> thread_logits(static_cast<std::size_t>(threads), MaxLogits::empty(run_.model));
    const auto n = static_cast<std::int64_t>(sequences.size());
    std::span<const float> values = weights_.data();
#pragma omp parallel num_threads(threads)
    {
      int t = 0;
#ifdef _OPENMP
      t = omp_get_thread_num();
#endif
      const auto ut = static_cast<std::size_t>(t);
      std::span<float> grads = t == 0 ? std::span<float>(grads_) : std::span<float>(thread_grads_[ut - 1]);
      // Zeroed by the thread that fills it, in parallel (a serial fill held the other thread idle).
      if (first_of_step) std::ranges::fill(grads, 0.0f);
      const std::int64_t first = n * t / threads, last = n * (t + 1) / threads;
      std::vector<std::int32_t> inputs, targets;
      for (std::int64_t i = first; i < last; ++i) {
        const std::span<const std::int32_t> s = sequences[static_cast<std::size_t>(i)];
        inputs.insert(inputs.end(), s.begin(), s.end() - 1);
        targets.insert(targets.end(), s.begin() + 1, s.end());
      }
      double aux = 0.0;
      const double objective =
          loss_and_gradients<float>(run_.model, weights_, values, inputs, targets, grads, &loads[ut],
                                    {.alpha = run_.training.aux_loss_alpha, .value = &aux}, &thread_logits[ut],
                                    last - first);
      results[ut].loss_sum += objective - aux;
      results[ut].aux_sum += aux;
    }
    PassResult total;
    for (std::size_t t = 0; t < results.size(); ++t) {
      total.loss_sum += results[t].loss_sum;
      total.aux_sum += results[t].aux_sum;
      max_logits.add(thread_logits[t]);
      for (std::size_t l = 0; l < load.tokens.size(); ++l)
        for (std::size_t e = 0; e < load.tokens[l].size(); ++e) load.tokens[l][e] += loads[t].tokens[l][e];
    }
    return total;
  }

  // grads_ ← scale · (grads_ + the other threads' buffers, in thread order), over blocks split
  // across the threads: each element is summed in the same order whatever the split.
  void reduce_gradients(float scale) {
    const muon::cpu::ElementwiseKernels& k = muon::cpu::elementwise_kernels(muon::detected_cpu_isa());
    constexpr std::int64_t block = 4096;  // 16 KiB: the sum and the scale of a block stay in L1
    const auto n = static_cast<std::int64_t>(grads_.size());
#pragma omp parallel for schedule(static)
    for (std::int64_t begin = 0; begin < n; begin += block) {
      const std::int64_t len = std::min(block, n - begin);
      for (const std::vector<float>& g : thread_grads_)
        k.axpby(1.0f, g.data() + begin, 1.0f, grads_.data() + begin, len);
      k.scale(grads_.data() + begin, len, scale);
    }
  }

  void save_checkpoint() {
    std::filesystem::path staging;
    if (rank0()) staging = begin_checkpoint(run_dir_, step());
    // Collective: every rank sends its optimizer shards, rank 0 writes the file.
    optimizer_.save(run_dir_ / "checkpoints" / ("." + checkpoint_name(step()) + ".tmp") / "optimizer.safetensors");
    if (!rank0()) return;
    weights_.save(staging, run_.model);
    muon::io::write_file_atomically(staging / "tiktoken.model", tokenizer_bytes_, "tokenizer copy");
    commit_checkpoint(run_dir_, step(), staging, {.tokens = tokens_, .data = data_identity_, .run = to_json(run_)},
                      run_.training.keep_checkpoints);
  }

  // The rank file as the run started with it: every checkpoint holds that tokenizer.
  static std::string read_tokenizer(const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw muon::FileError("cannot open tokenizer '" + file.string() + "'");
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw muon::FileError("cannot read tokenizer '" + file.string() + "'");
    return bytes;
  }

  [[nodiscard]] ExpertLoad empty_load() const {
    ExpertLoad load;
    load.tokens.resize(static_cast<std::size_t>(run_.model.num_hidden_layers));
    for (std::int64_t l = 0; l < run_.model.num_hidden_layers; ++l)
      if (run_.model.is_moe_layer(l))
        load.tokens[static_cast<std::size_t>(l)].assign(static_cast<std::size_t>(run_.model.n_routed_experts), 0);
    return load;
  }
  static std::vector<std::int64_t> flatten(const ExpertLoad& load) {
    std::vector<std::int64_t> out;
    for (const auto& layer : load.tokens) out.insert(out.end(), layer.begin(), layer.end());
    return out;
  }
  static void unflatten(std::span<const std::int64_t> flat, ExpertLoad& load) {
    std::size_t k = 0;
    for (auto& layer : load.tokens)
      for (std::int64_t& c : layer) c = flat[k++];
  }
  static std::vector<std::vector<std::int64_t>> moe_loads(const ExpertLoad& load) {
    std::vector<std::vector<std::int64_t>> out;
    for (const auto& layer : load.tokens)
      if (!layer.empty()) out.push_back(layer);
    return out;
  }
  static double load_imbalance(const ExpertLoad& load) {
    double sum = 0.0;
    int layers = 0;
    for (const auto& layer : load.tokens) {
      if (layer.empty()) continue;
      const double mean = static_cast<double>(std::accumulate(layer.begin(), layer.end(), std::int64_t{0})) /
                          static_cast<double>(layer.size());
      if (mean > 0.0) sum += static_cast<double>(*std::ranges::max_element(layer)) / mean;
      ++layers;
    }
    return layers > 0 ? sum / layers : 0.0;
  }

  RunConfig run_;
  const PackedSequences& data_;
  nlohmann::json data_identity_;
  std::string tokenizer_bytes_;
  std::filesystem::path run_dir_;
  Weights weights_;
  std::vector<float> grads_;
  std::vector<std::vector<float>> thread_grads_;
  muon::distributed::ZeroOptimizer<muon::EigenBackend, C> optimizer_;
  SequenceOrder order_;
  ExpertLoad load_;
  std::int64_t tokens_ = 0;
  bool resumed_ = false;
  std::optional<MetricsLog> metrics_;  // rank 0's, opened by the first train()
};

}  // namespace moonlight
