// quickstart: the smallest complete program. A two-hidden-layer MLP learns to imitate a random
// teacher network, once with Muon (hidden matrices) + AdamW (head, biases) and once with AdamW
// alone, at the same lr and weight decay; both loss curves are printed side by side.
//
//   ./quickstart [steps] [lr]
#include <Eigen/Dense>
#include <cstdio>
#include <cstdlib>
#include <muon/backends/eigen.hpp>
#include <muon/muon.hpp>
#include <random>
#include <vector>

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
constexpr int kIn = 32, kHidden = 128, kClasses = 10, kBatch = 128;

Matrix random_matrix(int rows, int cols, float scale, std::mt19937& gen) {
  std::normal_distribution<float> normal(0.0f, scale);
  Matrix m(rows, cols);
  for (float& v : m.reshaped()) v = normal(gen);
  return m;
}

// y = W3·relu(W2·relu(W1·x + b1) + b2); weights in PyTorch's [out, in] layout.
struct Mlp {
  Matrix w1, w2, w3, b1, b2, dw1, dw2, dw3, db1, db2;
  explicit Mlp(std::mt19937& gen)
      : w1(random_matrix(kHidden, kIn, 1.0f / std::sqrt(float(kIn)), gen)),
        w2(random_matrix(kHidden, kHidden, 1.0f / std::sqrt(float(kHidden)), gen)),
        w3(random_matrix(kClasses, kHidden, 1.0f / std::sqrt(float(kHidden)), gen)),
        b1(Matrix::Zero(1, kHidden)), b2(Matrix::Zero(1, kHidden)),
        dw1(w1), dw2(w2), dw3(w3), db1(b1), db2(b2) {}

  // The table the optimizer works on: names, roles, and where values and gradients live.
  std::vector<muon::Parameter> parameters(bool muon_for_hidden) {
    const auto matrix = muon_for_hidden ? muon::Role::matrix : muon::Role::head;
    return {{"fc1.weight", matrix, {w1.data(), {kHidden, kIn}}, {dw1.data(), {kHidden, kIn}}},
            {"fc2.weight", matrix, {w2.data(), {kHidden, kHidden}}, {dw2.data(), {kHidden, kHidden}}},
            {"head.weight", muon::Role::head, {w3.data(), {kClasses, kHidden}}, {dw3.data(), {kClasses, kHidden}}},
            {"fc1.bias", muon::Role::bias, {b1.data(), {kHidden}}, {db1.data(), {kHidden}}},
            {"fc2.bias", muon::Role::bias, {b2.data(), {kHidden}}, {db2.data(), {kHidden}}}};
  }

  // Mean cross-entropy against the labels; fills the gradients.
  float loss_and_gradients(const Matrix& x, const std::vector<int>& labels) {
    const Matrix h1 = ((x * w1.transpose()).rowwise() + b1.row(0)).cwiseMax(0.0f);
    const Matrix h2 = ((h1 * w2.transpose()).rowwise() + b2.row(0)).cwiseMax(0.0f);
    Matrix p = h2 * w3.transpose();
    float loss = 0.0f;
    for (int i = 0; i < p.rows(); ++i) {
      p.row(i).array() -= p.row(i).maxCoeff();
      p.row(i) = p.row(i).array().exp().matrix();
      p.row(i) /= p.row(i).sum();
      loss -= std::log(p(i, labels[i]));
      p(i, labels[i]) -= 1.0f;
    }
    const Matrix dlogits = p / float(p.rows());
    dw3 = dlogits.transpose() * h2;
    const Matrix dh2 = ((dlogits * w3).array() * (h2.array() > 0.0f).cast<float>()).matrix();
    dw2 = dh2.transpose() * h1;
    db2 = dh2.colwise().sum();
    const Matrix dh1 = ((dh2 * w2).array() * (h1.array() > 0.0f).cast<float>()).matrix();
    dw1 = dh1.transpose() * x;
    db1 = dh1.colwise().sum();
    return loss / float(p.rows());
  }
};

// Labels from a fixed random teacher, the same for both runs.
struct Teacher {
  std::mt19937 gen{7};
  Mlp net{gen};
  void batch(Matrix& x, std::vector<int>& labels) {
    x = random_matrix(kBatch, kIn, 1.0f, gen);
    const Matrix h1 = (x * net.w1.transpose()).cwiseMax(0.0f);
    const Matrix logits = (h1 * net.w2.transpose()).cwiseMax(0.0f) * net.w3.transpose();
    labels.resize(kBatch);
    for (int i = 0; i < kBatch; ++i) logits.row(i).maxCoeff(&labels[i]);
  }
};

std::vector<float> train(bool use_muon, int steps, double lr) {
  std::mt19937 gen(1);
  Mlp model(gen);
  Teacher teacher;
  muon::Optimizer<muon::EigenBackend> opt(
      model.parameters(use_muon),
      {.lr = lr, .weight_decay = 0.1, .schedule = muon::WarmupCosine{.warmup_steps = 20, .total_steps = steps}});
  std::vector<float> losses;
  Matrix x;
  std::vector<int> labels;
  for (int step = 0; step < steps; ++step) {
    teacher.batch(x, labels);
    losses.push_back(model.loss_and_gradients(x, labels));
    (void)opt.step();
  }
  return losses;
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 600;
  const double lr = argc > 2 ? std::atof(argv[2]) : 1e-2;
  if (steps < 21 || !(lr > 0.0)) {
    std::fprintf(stderr, "usage: quickstart [steps >= 21] [lr > 0]\n");
    return 2;
  }
  const auto muon_losses = train(true, steps, lr);
  const auto adamw_losses = train(false, steps, lr);
  std::printf("MLP imitating a random teacher, lr %g, wd 0.1, warmup + cosine, batch %d\n", lr, kBatch);
  std::printf("%6s  %-24s %-24s\n", "step", "Muon + AdamW", "AdamW only");
  const auto bar = [](float loss) { return std::string(static_cast<std::size_t>(std::min(loss, 2.4f) * 8.0f), '#'); };
  const int every = steps / 20;
  for (int s = 0; s < steps; s += every) {
    // Mean over the window, so the curve is not just batch noise.
    float m = 0.0f, a = 0.0f;
    const int end = std::min(steps, s + every);
    for (int i = s; i < end; ++i) m += muon_losses[i], a += adamw_losses[i];
    m /= float(end - s), a /= float(end - s);
    std::printf("%6d  %.3f %-18s %.3f %-18s\n", s, m, bar(m).c_str(), a, bar(a).c_str());
  }
  return 0;
}
