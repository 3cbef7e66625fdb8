#include "kernels/query_prediction.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tests/unit/kernels/kernel_test_util.h"

namespace asyncspade::kernels {
namespace {

// A window filled the way the predictor's caller fills it: by appending queries one step at a
// time. history[b][t] is the query [num_heads][d] appended at step t.
struct Window {
  QueryWindowShape shape;
  std::vector<float> buffer;
  std::vector<int32_t> counts, write_pos;
  std::vector<std::vector<std::vector<float>>> history;

  explicit Window(const QueryWindowShape& s)
      : shape(s),
        buffer(size_t(s.num_seqs) * s.num_heads * s.window_size * s.head_dim, -99.0f),
        counts(s.num_seqs, 0),
        write_pos(s.num_seqs, 0),
        history(s.num_seqs) {}

  // Appends one step's queries [num_seqs][num_heads][d].
  void Append(const std::vector<float>& step) {
    cpu::AppendToQueryWindow(step.data(), shape, buffer.data(), counts.data(), write_pos.data());
    const size_t per_seq = size_t(shape.num_heads) * shape.head_dim;
    for (int b = 0; b < shape.num_seqs; ++b) {
      history[b].emplace_back(step.begin() + b * per_seq, step.begin() + (b + 1) * per_seq);
    }
  }

  // The last n queries of head h of sequence b, oldest first.
  std::vector<std::vector<double>> Recent(int b, int h, int n) const {
    std::vector<std::vector<double>> out;
    const auto& hist = history[b];
    for (size_t t = hist.size() - n; t < hist.size(); ++t) {
      out.emplace_back(hist[t].begin() + size_t(h) * shape.head_dim, hist[t].begin() + size_t(h + 1) * shape.head_dim);
    }
    return out;
  }

  std::vector<float> Predict(const QueryPredictionParams& params) const {
    std::vector<float> out(size_t(shape.num_seqs) * shape.num_heads * shape.head_dim, -77.0f);
    cpu::PredictQueries(buffer.data(), shape, counts.data(), write_pos.data(), params, out.data());
    return out;
  }
};

// Solves m x = v by Gaussian elimination with partial pivoting (independent of the Cholesky path).
std::vector<double> GaussSolve(std::vector<std::vector<double>> m, std::vector<double> v) {
  const int n = static_cast<int>(v.size());
  for (int col = 0; col < n; ++col) {
    int pivot = col;
    for (int r = col + 1; r < n; ++r) {
      if (std::abs(m[r][col]) > std::abs(m[pivot][col])) pivot = r;
    }
    std::swap(m[col], m[pivot]);
    std::swap(v[col], v[pivot]);
    for (int r = col + 1; r < n; ++r) {
      const double factor = m[r][col] / m[col][col];
      for (int c = col; c < n; ++c) m[r][c] -= factor * m[col][c];
      v[r] -= factor * v[col];
    }
  }
  std::vector<double> x(n);
  for (int r = n - 1; r >= 0; --r) {
    double sum = v[r];
    for (int c = r + 1; c < n; ++c) sum -= m[r][c] * x[c];
    x[r] = sum / m[r][r];
  }
  return x;
}

// Ridge regression stated as least squares on an explicit design matrix: one row per (target j,
// dimension c) with the lagged values as regressors, stacked over `heads`; λ = ε · trace(XᵀX) / p.
std::vector<double> FitByDesignMatrix(const std::vector<std::vector<std::vector<double>>>& heads, int p,
                                      double epsilon) {
  std::vector<std::vector<double>> rows;
  std::vector<double> targets;
  for (const auto& e : heads) {
    for (size_t j = p; j < e.size(); ++j) {
      for (size_t c = 0; c < e[j].size(); ++c) {
        std::vector<double> row(p);
        for (int i = 1; i <= p; ++i) row[i - 1] = e[j - i][c];
        rows.push_back(row);
        targets.push_back(e[j][c]);
      }
    }
  }
  std::vector<std::vector<double>> xtx(p, std::vector<double>(p, 0.0));
  std::vector<double> xty(p, 0.0);
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int i = 0; i < p; ++i) {
      xty[i] += rows[r][i] * targets[r];
      for (int k = 0; k < p; ++k) xtx[i][k] += rows[r][i] * rows[r][k];
    }
  }
  double trace = 0;
  for (int i = 0; i < p; ++i) trace += xtx[i][i];
  for (int i = 0; i < p; ++i) xtx[i][i] += epsilon * trace / p;
  return GaussSolve(xtx, xty);
}

std::vector<double> Extrapolate(const std::vector<std::vector<double>>& e, const std::vector<double>& a) {
  std::vector<double> out(e.back().size(), 0.0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t c = 0; c < out.size(); ++c) out[c] += a[i - 1] * e[e.size() - i][c];
  }
  return out;
}

void ExpectVectorNear(const float* actual, const std::vector<double>& expected, double rel, const std::string& what) {
  double norm = 0;
  for (double x : expected) norm = std::max(norm, std::abs(x));
  for (size_t c = 0; c < expected.size(); ++c) {
    ASSERT_NEAR(actual[c], expected[c], rel * std::max(norm, 1e-30)) << what << " dim " << c;
  }
}

std::vector<float> RandomStep(const QueryWindowShape& s, uint32_t seed, float scale = 1.0f) {
  std::vector<float> step = testing::RandomFloats(size_t(s.num_seqs) * s.num_heads * s.head_dim, seed);
  for (float& x : step) x *= scale;
  return step;
}

TEST(QueryPredictionTest, AppendWrapsTheRingAndSaturatesTheCount) {
  const QueryWindowShape shape{2, 3, 4, 5};
  Window w(shape);
  for (int t = 0; t < 6; ++t) {
    w.Append(RandomStep(shape, 100 + t));
    EXPECT_EQ(w.counts[0], std::min(t + 1, 4));
    EXPECT_EQ(w.write_pos[1], (t + 1) % 4);
  }
  // After 6 appends into 4 slots, slot s holds step 4, 5, 2, 3 for s = 0..3.
  const int step_in_slot[4] = {4, 5, 2, 3};
  for (int b = 0; b < 2; ++b) {
    for (int h = 0; h < 3; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int c = 0; c < 5; ++c) {
          ASSERT_EQ(w.buffer[((size_t(b) * 3 + h) * 4 + s) * 5 + c], w.history[b][step_in_slot[s]][h * 5 + c]);
        }
      }
    }
  }
}

TEST(QueryPredictionTest, PerHeadRidgeMatchesExplicitDesignMatrix) {
  for (int p = 1; p <= kMaxQueryPredictionLags; ++p) {
    for (int steps : {p + 1, 9, 16, 23}) {  // a short window, a full one, and one that wrapped
      SCOPED_TRACE(::testing::Message() << "lags " << p << " steps " << steps);
      const QueryWindowShape shape{2, 3, 16, 24};
      Window w(shape);
      for (int t = 0; t < steps; ++t) w.Append(RandomStep(shape, 1000 * p + t));
      const QueryPredictionParams params{QueryPredictionMode::kRidgePerHead, p, 0.05f};
      const std::vector<float> predicted = w.Predict(params);
      const int n = std::min(steps, shape.window_size);
      for (int b = 0; b < shape.num_seqs; ++b) {
        for (int h = 0; h < shape.num_heads; ++h) {
          const auto e = w.Recent(b, h, n);
          const std::vector<double> a = FitByDesignMatrix({e}, p, params.ridge_epsilon);
          ExpectVectorNear(&predicted[(size_t(b) * shape.num_heads + h) * shape.head_dim], Extrapolate(e, a), 1e-5,
                           "seq " + std::to_string(b) + " head " + std::to_string(h));
        }
      }
    }
  }
}

TEST(QueryPredictionTest, SharedCoefficientsMatchStackedDesignMatrix) {
  const QueryWindowShape shape{3, 4, 8, 16};
  Window w(shape);
  for (int t = 0; t < 11; ++t) w.Append(RandomStep(shape, 500 + t));
  const QueryPredictionParams params{QueryPredictionMode::kRidgeSharedPerLayer, 3, 0.01f};
  const std::vector<float> predicted = w.Predict(params);
  for (int b = 0; b < shape.num_seqs; ++b) {
    std::vector<std::vector<std::vector<double>>> heads;
    for (int h = 0; h < shape.num_heads; ++h) heads.push_back(w.Recent(b, h, shape.window_size));
    const std::vector<double> a = FitByDesignMatrix(heads, params.lags, params.ridge_epsilon);
    for (int h = 0; h < shape.num_heads; ++h) {
      ExpectVectorNear(&predicted[(size_t(b) * shape.num_heads + h) * shape.head_dim], Extrapolate(heads[h], a),
                       1e-5, "seq " + std::to_string(b) + " head " + std::to_string(h));
    }
  }
}

TEST(QueryPredictionTest, RecoversAnExactAutoregressiveSequence) {
  // q_t = 1.3 q_{t-1} − 0.6 q_{t-2} (a damped oscillation): with ε = 0 and two lags the fit is
  // exact, so the prediction is the true next query.
  const QueryWindowShape shape{1, 2, 16, 32};
  Window w(shape);
  std::vector<std::vector<float>> seq = {RandomStep(shape, 1), RandomStep(shape, 2)};
  for (int t = 2; t < 21; ++t) {
    std::vector<float> next(seq[0].size());
    for (size_t i = 0; i < next.size(); ++i) next[i] = 1.3f * seq[t - 1][i] - 0.6f * seq[t - 2][i];
    seq.push_back(next);
  }
  for (int t = 0; t < 20; ++t) w.Append(seq[t]);
  const std::vector<float> predicted = w.Predict({QueryPredictionMode::kRidgePerHead, 2, 0.0f});
  std::vector<double> truth(seq[20].begin(), seq[20].end());
  ExpectVectorNear(predicted.data(), truth, 1e-4, "AR(2) next query");
  // Per layer, all heads follow the same law: the shared fit is exact too.
  const std::vector<float> shared = w.Predict({QueryPredictionMode::kRidgeSharedPerLayer, 2, 0.0f});
  ExpectVectorNear(shared.data(), truth, 1e-4, "AR(2) next query, shared coefficients");
}

TEST(QueryPredictionTest, RidgeIsRelativeSoScalingQueriesScalesThePrediction) {
  const QueryWindowShape shape{1, 2, 16, 8};
  Window small(shape), large(shape);
  for (int t = 0; t < 16; ++t) {
    small.Append(RandomStep(shape, 40 + t));
    large.Append(RandomStep(shape, 40 + t, 1024.0f));  // a power of two: the inputs scale exactly
  }
  const QueryPredictionParams params{QueryPredictionMode::kRidgePerHead, 3, 0.1f};
  const std::vector<float> a = small.Predict(params);
  const std::vector<float> b = large.Predict(params);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(b[i], 1024.0f * a[i], 1e-3f * std::abs(1024.0f * a[i]) + 1e-3f);
}

TEST(QueryPredictionTest, RepeatedQueryShrinksByTheRidgeOrFallsBack) {
  // Every entry equals e: A = m|e|² · ones(2,2), r = m|e|² · (1, 1). With ε > 0 the solution is
  // a1 = a2 = 1 / (2 + ε), so q̂ = e · 2 / (2 + ε). With ε = 0, A is singular: last query.
  const QueryWindowShape shape{1, 1, 8, 16};
  Window w(shape);
  const std::vector<float> e = RandomStep(shape, 9);
  for (int t = 0; t < 8; ++t) w.Append(e);
  const float epsilon = 0.5f;
  const std::vector<float> ridge = w.Predict({QueryPredictionMode::kRidgePerHead, 2, epsilon});
  const std::vector<float> singular = w.Predict({QueryPredictionMode::kRidgePerHead, 2, 0.0f});
  for (int c = 0; c < 16; ++c) {
    EXPECT_NEAR(ridge[c], e[c] * 2.0 / (2.0 + epsilon), 1e-6);
    EXPECT_EQ(singular[c], e[c]);
  }
}

TEST(QueryPredictionTest, FallsBackToTheLastQuery) {
  const QueryWindowShape shape{3, 2, 8, 4};
  Window w(shape);
  w.Append(RandomStep(shape, 1));
  w.Append(RandomStep(shape, 2));
  w.counts = {0, 2, 2};  // sequence 0: empty window
  // lags 2 need 3 entries: sequences 1 and 2 fall back to their newest query.
  for (QueryPredictionMode mode : {QueryPredictionMode::kRidgePerHead, QueryPredictionMode::kRidgeSharedPerLayer,
                                   QueryPredictionMode::kLastQuery}) {
    const std::vector<float> predicted = w.Predict({mode, 2, 0.01f});
    for (int h = 0; h < 2; ++h) {
      for (int c = 0; c < 4; ++c) {
        EXPECT_EQ(predicted[(0 * 2 + h) * 4 + c], 0.0f);
        for (int b = 1; b < 3; ++b) EXPECT_EQ(predicted[(size_t(b) * 2 + h) * 4 + c], w.history[b][1][h * 4 + c]);
      }
    }
  }
  // kLastQuery with a full window is the newest entry too.
  for (int t = 0; t < 9; ++t) w.Append(RandomStep(shape, 10 + t));
  const std::vector<float> last = w.Predict({QueryPredictionMode::kLastQuery, 2, 0.01f});
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(last[i], w.history[0].back()[i]);
}

}  // namespace
}  // namespace asyncspade::kernels
