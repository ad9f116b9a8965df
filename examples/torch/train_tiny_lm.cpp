// train_tiny_lm: a small decoder-only transformer learns the characters of the GPL-3 text that
// every Debian system ships, trained twice from the same initial weights on the same batches at
// the same lr and weight decay: once with muon::libtorch::Muon (Moonlight's routing: hidden matrices
// run Muon, embeddings, LM head and 1-D tensors run AdamW) and once with torch::optim::AdamW.
// Both smoothed training-loss curves (and the loss on the held-out last 10% of the text) are
// printed side by side, then the step at which Muon first reached AdamW's final training loss.
//
//   OMP_WAIT_POLICY=passive train_tiny_lm [--steps N] [--lr X] [--wd X]
//
// OMP_WAIT_POLICY=passive: LibTorch's OpenMP threads otherwise spin between ops while OpenBLAS's
// own threads want the same cores; on a busy 2-core VM that made a step up to 8x slower.
#include <torch/torch.h>

#include <muon/libtorch/muon.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <numbers>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace {

constexpr std::int64_t kDModel = 128, kHeads = 4, kLayers = 2, kContext = 64, kBatch = 32;
constexpr const char* kTextPath = "/usr/share/common-licenses/GPL-3";
constexpr std::uint64_t kInitSeed = 0, kDataSeed = 1;
constexpr double kMaxGradNorm = 1.0;
constexpr double kSmoothing = 0.95;  // EMA of the training loss, about a 20-step window

struct Config {
  int steps = 400;
  double lr = 1e-2;
  double wd = 0.1;
};

struct CausalSelfAttentionImpl : torch::nn::Module {
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};

  CausalSelfAttentionImpl() {
    const auto projection = [] { return torch::nn::Linear(torch::nn::LinearOptions(kDModel, kDModel).bias(false)); };
    q = register_module("q_proj", projection());
    k = register_module("k_proj", projection());
    v = register_module("v_proj", projection());
    o = register_module("o_proj", projection());
  }

  // mask: [T, T], true above the diagonal (the future a position may not see).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask) {
    const auto batch = x.size(0), time = x.size(1);
    constexpr auto head_dim = kDModel / kHeads;
    const auto heads = [&](torch::nn::Linear& proj) {
      return proj(x).view({batch, time, kHeads, head_dim}).transpose(1, 2);
    };
    const auto scores = torch::matmul(heads(q), heads(k).transpose(-2, -1)) / std::sqrt(double(head_dim));
    const auto attention = scores.masked_fill(mask, -std::numeric_limits<float>::infinity()).softmax(-1);
    return o(torch::matmul(attention, heads(v)).transpose(1, 2).reshape({batch, time, kDModel}));
  }
};
TORCH_MODULE(CausalSelfAttention);

struct BlockImpl : torch::nn::Module {
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  CausalSelfAttention attn{nullptr};
  torch::nn::Linear fc{nullptr}, proj{nullptr};

  BlockImpl() {
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kDModel})));
    attn = register_module("attn", CausalSelfAttention());
    ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kDModel})));
    fc = register_module("fc", torch::nn::Linear(kDModel, 4 * kDModel));
    proj = register_module("proj", torch::nn::Linear(4 * kDModel, kDModel));
  }

  torch::Tensor forward(torch::Tensor x, const torch::Tensor& mask) {
    x = x + attn(ln1(x), mask);
    return x + proj(torch::gelu(fc(ln2(x))));
  }
};
TORCH_MODULE(Block);

// Parameter names matter: moonlight_param_groups sends "embed", "pos_embed" and "lm_head" to AdamW.
struct TinyLmImpl : torch::nn::Module {
  torch::nn::Embedding embed{nullptr}, pos_embed{nullptr};
  std::vector<Block> blocks;
  torch::nn::LayerNorm ln_f{nullptr};
  torch::nn::Linear lm_head{nullptr};

  explicit TinyLmImpl(std::int64_t vocab) {
    embed = register_module("embed", torch::nn::Embedding(vocab, kDModel));
    pos_embed = register_module("pos_embed", torch::nn::Embedding(kContext, kDModel));
    for (std::int64_t i = 0; i < kLayers; ++i) blocks.push_back(register_module("block" + std::to_string(i), Block()));
    ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kDModel})));
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(kDModel, vocab).bias(false)));
  }

  // tokens: [B, T] -> logits [B, T, vocab]
  torch::Tensor forward(const torch::Tensor& tokens) {
    const auto time = tokens.size(1);
    auto x = embed(tokens) + pos_embed(torch::arange(time, torch::kLong));
    const auto mask = torch::triu(torch::ones({time, time}, torch::kBool), 1);
    for (auto& block : blocks) x = block(x, mask);
    return lm_head(ln_f(x));
  }
};
TORCH_MODULE(TinyLm);

struct Corpus {
  torch::Tensor train, heldout;  // int64 token ids
  std::int64_t vocab = 0;
};

Corpus load_corpus(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error(std::string("cannot read ") + path +
                             " (the training text; Debian's base-files package installs it)");
  }
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (text.size() < 10 * (kContext + 1)) throw std::runtime_error(std::string(path) + " is too short");

  std::array<std::int64_t, 256> id{};
  id.fill(-1);
  for (const char c : text) id[static_cast<unsigned char>(c)] = 0;
  Corpus corpus;
  for (auto& i : id)
    if (i == 0) i = corpus.vocab++;
  std::vector<std::int64_t> tokens;
  tokens.reserve(text.size());
  for (const char c : text) tokens.push_back(id[static_cast<unsigned char>(c)]);

  const auto all = torch::tensor(tokens, torch::kLong);
  const auto split = static_cast<std::int64_t>(tokens.size() * 9 / 10);
  corpus.train = all.slice(0, 0, split);
  corpus.heldout = all.slice(0, split);
  return corpus;
}

// Windows of kContext + 1 tokens starting at `starts`: inputs are the first kContext, targets
// the last kContext.
std::pair<torch::Tensor, torch::Tensor> windows(const torch::Tensor& tokens, const torch::Tensor& starts) {
  const auto w = tokens.index({starts.unsqueeze(1) + torch::arange(kContext + 1, torch::kLong)});
  return {w.slice(1, 0, kContext), w.slice(1, 1)};
}

torch::Tensor loss_of(TinyLm& model, const torch::Tensor& inputs, const torch::Tensor& targets) {
  const auto logits = model(inputs);
  return torch::nn::functional::cross_entropy(logits.view({-1, logits.size(-1)}), targets.reshape(-1));
}

// Linear warmup over the first 5% of the steps, then cosine decay to 10% of the peak.
double lr_at(int step, const Config& cfg) {
  const int warmup = std::max(1, cfg.steps / 20);
  if (step < warmup) return cfg.lr * (step + 1) / warmup;
  const double progress = double(step - warmup) / std::max(1, cfg.steps - warmup);
  return cfg.lr * (0.1 + 0.45 * (1.0 + std::cos(std::numbers::pi * progress)));
}

double heldout_loss(TinyLm& model, const Corpus& corpus) {
  torch::NoGradGuard no_grad;
  const auto starts = torch::arange(0, corpus.heldout.size(0) - kContext, kContext, torch::kLong);
  const auto [inputs, targets] = windows(corpus.heldout, starts);
  return loss_of(model, inputs, targets).item<double>();
}

struct Run {
  std::vector<double> smoothed;  // bias-corrected EMA of the training loss, one per step
  std::vector<double> heldout;   // one per `every` steps
  double seconds = 0.0;
};

template <class GroupOptions>
Run train(TinyLm& model, torch::optim::Optimizer& optimizer, const Corpus& corpus, const torch::Tensor& starts,
          const Config& cfg, int every) {
  Run run;
  double ema = 0.0, eval_seconds = 0.0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = 0; step < cfg.steps; ++step) {
    for (auto& group : optimizer.param_groups()) static_cast<GroupOptions&>(group.options()).lr(lr_at(step, cfg));
    const auto [inputs, targets] = windows(corpus.train, starts[step]);
    optimizer.zero_grad();
    const auto loss = loss_of(model, inputs, targets);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(model->parameters(), kMaxGradNorm);
    optimizer.step();
    ema = kSmoothing * ema + (1.0 - kSmoothing) * loss.item<double>();
    run.smoothed.push_back(ema / (1.0 - std::pow(kSmoothing, step + 1)));
    if ((step + 1) % every == 0) {
      const auto e0 = std::chrono::steady_clock::now();
      run.heldout.push_back(heldout_loss(model, corpus));
      eval_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
    }
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - eval_seconds;
  return run;
}

TinyLm initial_model(std::int64_t vocab) {
  torch::manual_seed(kInitSeed);
  return TinyLm(vocab);
}

template <class T>
T parse_number(const std::string& option, const std::string& text) {
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size())
    throw std::invalid_argument("bad value for " + option + ": " + text);
  return value;
}

Config parse_args(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument("missing value after " + arg);
    const std::string value = argv[++i];
    if (arg == "--steps") cfg.steps = parse_number<int>(arg, value);
    else if (arg == "--lr") cfg.lr = parse_number<double>(arg, value);
    else if (arg == "--wd") cfg.wd = parse_number<double>(arg, value);
    else throw std::invalid_argument("unknown option " + arg);
  }
  if (cfg.steps < 1 || !(cfg.lr > 0.0) || !(cfg.wd >= 0.0)) throw std::invalid_argument("need steps >= 1, lr > 0, wd >= 0");
  return cfg;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  try {
    cfg = parse_args(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\nusage: %s [--steps N] [--lr X] [--wd X]\n", e.what(), argv[0]);
    return 2;
  }
  try {
    torch::set_num_threads(2);
    const Corpus corpus = load_corpus(kTextPath);
    torch::manual_seed(kDataSeed);
    const auto starts = torch::randint(corpus.train.size(0) - kContext, {cfg.steps, kBatch}, torch::kLong);

    std::int64_t parameters = 0;
    for (const auto& p : initial_model(corpus.vocab)->parameters()) parameters += p.numel();
    std::printf("text: %s, %lld characters, vocabulary %lld (last 10%% held out)\n", kTextPath,
                static_cast<long long>(corpus.train.size(0) + corpus.heldout.size(0)),
                static_cast<long long>(corpus.vocab));
    std::printf("model: d_model %lld, %lld layers, %lld heads, context %lld, %lld parameters\n",
                static_cast<long long>(kDModel), static_cast<long long>(kLayers), static_cast<long long>(kHeads),
                static_cast<long long>(kContext), static_cast<long long>(parameters));
    std::printf("training: %d steps of batch %lld, lr %g (warmup %d steps, cosine to 10%%), weight decay %g\n\n",
                cfg.steps, static_cast<long long>(kBatch), cfg.lr, std::max(1, cfg.steps / 20), cfg.wd);

    const int every = std::max(1, cfg.steps / 20);
    auto adamw_model = initial_model(corpus.vocab);
    torch::optim::AdamW adamw(adamw_model->parameters(),
                              torch::optim::AdamWOptions(cfg.lr).betas({0.9, 0.95}).weight_decay(cfg.wd));
    const Run with_adamw = train<torch::optim::AdamWOptions>(adamw_model, adamw, corpus, starts, cfg, every);
    std::printf("AdamW: %.1f s\n", with_adamw.seconds);

    auto muon_model = initial_model(corpus.vocab);
    auto groups = muon::libtorch::moonlight_param_groups(
        *muon_model, muon::libtorch::MuonOptions(cfg.lr).weight_decay(cfg.wd));
    for (auto& group : groups) {
      const bool is_muon = static_cast<muon::libtorch::MuonOptions&>(group.options()).role() == muon::Rule::muon;
      std::printf("  %s group: %zu tensors\n", is_muon ? "Muon " : "AdamW", group.params().size());
    }
    muon::libtorch::Muon muon(std::move(groups));
    const Run with_muon = train<muon::libtorch::MuonOptions>(muon_model, muon, corpus, starts, cfg, every);
    std::printf("Muon:  %.1f s\n\n", with_muon.seconds);

    std::printf("%6s %9s | %-17s | %-17s\n", "", "", "train (smoothed)", "held-out");
    std::printf("%6s %9s | %8s %8s | %8s %8s\n", "step", "lr", "AdamW", "Muon", "AdamW", "Muon");
    for (std::size_t i = 0; i < with_adamw.heldout.size(); ++i) {
      const int step = int(i + 1) * every - 1;
      std::printf("%6d %9.2e | %8.4f %8.4f | %8.4f %8.4f\n", step + 1, lr_at(step, cfg), with_adamw.smoothed[step],
                  with_muon.smoothed[step], with_adamw.heldout[i], with_muon.heldout[i]);
    }

    const double target = with_adamw.smoothed.back();
    std::printf("\nfinal smoothed training loss: AdamW %.4f, Muon %.4f\n", target, with_muon.smoothed.back());
    std::printf("final held-out loss:          AdamW %.4f, Muon %.4f\n", heldout_loss(adamw_model, corpus),
                heldout_loss(muon_model, corpus));
    const auto reached = std::find_if(with_muon.smoothed.begin(), with_muon.smoothed.end(),
                                      [&](double loss) { return loss <= target; });
    if (reached == with_muon.smoothed.end()) {
      std::printf("Muon did not reach AdamW's final smoothed loss %.4f in %d steps\n", target, cfg.steps);
    } else {
      const auto step = reached - with_muon.smoothed.begin() + 1;
      std::printf("Muon reached AdamW's final smoothed loss %.4f at step %lld of %d: %.2fx the steps\n", target,
                  static_cast<long long>(step), cfg.steps, double(step) / cfg.steps);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
