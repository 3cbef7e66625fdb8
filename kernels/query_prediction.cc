#include "kernels/query_prediction.h"

#include <glog/logging.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

namespace asyncspade::kernels::cpu {
namespace {

constexpr int kMaxLags = kMaxQueryPredictionLags;

using Matrix = std::array<std::array<double, kMaxLags>, kMaxLags>;
using Vector = std::array<double, kMaxLags>;

// Solves (gram + λI) a = rhs, λ = epsilon * trace(gram) / p, by Cholesky. False when a pivot is not
// finite or not above kMinRelativePivot times the mean diagonal (numerically singular).
bool SolveRidge(const Matrix& gram, const Vector& rhs, int p, double epsilon, Vector* a) {
  double trace = 0.0;
  for (int i = 0; i < p; ++i) trace += gram[i][i];
  const double lambda = epsilon * trace / p;
  const double min_pivot = kMinRelativePivot * (trace / p + lambda);
  Matrix l{};  // lower-triangular factor
  for (int i = 0; i < p; ++i) {
    for (int k = 0; k <= i; ++k) {
      double sum = gram[i][k] + (i == k ? lambda : 0.0);
      for (int m = 0; m < k; ++m) sum -= l[i][m] * l[k][m];
      if (i == k) {
        if (!(sum > min_pivot) || !std::isfinite(sum)) return false;
        l[i][i] = std::sqrt(sum);
      } else {
        l[i][k] = sum / l[k][k];
      }
    }
  }
  Vector y{};
  for (int i = 0; i < p; ++i) {
    double sum = rhs[i];
    for (int m = 0; m < i; ++m) sum -= l[i][m] * y[m];
    y[i] = sum / l[i][i];
  }
  for (int i = p - 1; i >= 0; --i) {
    double sum = y[i];
    for (int m = i + 1; m < p; ++m) sum -= l[m][i] * (*a)[m];
    (*a)[i] = sum / l[i][i];
  }
  for (int i = 0; i < p; ++i) {
    if (!std::isfinite((*a)[i])) return false;
  }
  return true;
}

// The window of one sequence and head in chronological order.
class WindowView {
 public:
  WindowView(const float* window, const QueryWindowShape& shape, int b, int h, int count, int write_pos)
      : base_(window + (int64_t{b} * shape.num_heads + h) * shape.window_size * shape.head_dim),
        window_size_(shape.window_size),
        head_dim_(shape.head_dim),
        count_(count),
        write_pos_(write_pos) {}

  // Entry x, 0 = oldest, count - 1 = newest.
  const float* entry(int x) const {
    const int slot = ((write_pos_ - count_ + x) % window_size_ + window_size_) % window_size_;
    return base_ + int64_t{slot} * head_dim_;
  }

  double Dot(int x, int y) const {
    const float* a = entry(x);
    const float* b = entry(y);
    double sum = 0.0;
    for (int c = 0; c < head_dim_; ++c) sum += double{a[c]} * b[c];
    return sum;
  }

 private:
  const float* base_;
  int window_size_;
  int head_dim_;
  int count_;
  int write_pos_;
};

// Adds the Gram A and right-hand side r of one head's window to *gram and *rhs.
void AccumulateNormalEquations(const WindowView& w, int n, int p, Matrix* gram, Vector* rhs) {
  for (int j = p; j < n; ++j) {
    for (int i = 1; i <= p; ++i) {
      (*rhs)[i - 1] += w.Dot(j, j - i);
      for (int k = 1; k <= p; ++k) (*gram)[i - 1][k - 1] += w.Dot(j - i, j - k);
    }
  }
}

void WritePrediction(const WindowView& w, int n, int p, const Vector* a, int head_dim, float* out) {
  if (n == 0) {
    std::fill(out, out + head_dim, 0.0f);
    return;
  }
  if (a == nullptr) {
    std::memcpy(out, w.entry(n - 1), sizeof(float) * head_dim);
    return;
  }
  for (int c = 0; c < head_dim; ++c) {
    double sum = 0.0;
    for (int i = 1; i <= p; ++i) sum += (*a)[i - 1] * w.entry(n - i)[c];
    out[c] = static_cast<float>(sum);
  }
}

}  // namespace

void AppendToQueryWindow(const float* queries, const QueryWindowShape& shape, float* window,
                         int32_t* counts, int32_t* write_pos) {
  const int w = shape.window_size;
  const int d = shape.head_dim;
  for (int b = 0; b < shape.num_seqs; ++b) {
    const int slot = ((write_pos[b] % w) + w) % w;
    for (int h = 0; h < shape.num_heads; ++h) {
      const int64_t row = int64_t{b} * shape.num_heads + h;
      std::memcpy(window + (row * w + slot) * d, queries + row * d, sizeof(float) * d);
    }
    write_pos[b] = (slot + 1) % w;
    counts[b] = std::min(std::max(counts[b], 0) + 1, w);
  }
}

void PredictQueries(const float* window, const QueryWindowShape& shape, const int32_t* counts,
                    const int32_t* write_pos, const QueryPredictionParams& params,
                    float* predicted) {
  const int p = params.lags;
  CHECK(params.mode == QueryPredictionMode::kLastQuery || (p >= 1 && p <= kMaxLags && p < shape.window_size))
      << "query prediction: lags " << p << " outside [1, min(" << kMaxLags << ", window - 1)]";
  const int d = shape.head_dim;
  for (int b = 0; b < shape.num_seqs; ++b) {
    const int n = std::clamp(counts[b], 0, shape.window_size);
    const auto view = [&](int h) { return WindowView(window, shape, b, h, n, write_pos[b]); };
    const auto out = [&](int h) { return predicted + (int64_t{b} * shape.num_heads + h) * d; };
    const bool regress = params.mode != QueryPredictionMode::kLastQuery && n >= p + 1;

    if (regress && params.mode == QueryPredictionMode::kRidgeSharedPerLayer) {
      Matrix gram{};
      Vector rhs{};
      for (int h = 0; h < shape.num_heads; ++h) AccumulateNormalEquations(view(h), n, p, &gram, &rhs);
      Vector a{};
      const bool solved = SolveRidge(gram, rhs, p, params.ridge_epsilon, &a);
      for (int h = 0; h < shape.num_heads; ++h) WritePrediction(view(h), n, p, solved ? &a : nullptr, d, out(h));
      continue;
    }
    for (int h = 0; h < shape.num_heads; ++h) {
      Vector a{};
      bool solved = false;
      if (regress) {
        Matrix gram{};
        Vector rhs{};
        AccumulateNormalEquations(view(h), n, p, &gram, &rhs);
        solved = SolveRidge(gram, rhs, p, params.ridge_epsilon, &a);
      }
      WritePrediction(view(h), n, p, solved ? &a : nullptr, d, out(h));
    }
  }
}

}  // namespace asyncspade::kernels::cpu
