// The decode worker's query predictor state (AsyncSpade step 1): per (sequence, layer) a ring
// buffer of the W most recent queries of every query head, from which the query of the next
// position is extrapolated (kernels::cpu::PredictQueries: ridge regression on p scalar lag
// coefficients, per head or shared by the layer's heads, or the last query itself).
//
// Regression space. Queries arrive post-RoPE. Post-RoPE regression fits the rotated queries
// directly (the lagged queries carry their own positions' rotations). Pre-RoPE regression first
// un-rotates each query by its position, predicts in that space and rotates the prediction to the
// target position: it removes the rotation's drift, which the lag coefficients would otherwise
// have to absorb. Which is better is an empirical question (docs/quality.md).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config/sparse_policy_config.h"
#include "kernels/query_prediction.h"

namespace asyncspade {

// Defaults: those of QueryPredictorConfig (the best-recall variant of docs/quality.md).
struct QueryPredictorOptions {
  int window = 16;
  int lags = 4;
  double ridge_epsilon = 1e-3;
  kernels::QueryPredictionMode mode = kernels::QueryPredictionMode::kRidgeSharedPerLayer;
  QueryPredictorRope space = QueryPredictorRope::kPre;  // regression space (see above)

  // The deployment's `sparse.predictor` section (mode ridge → per head, ridge_shared → shared).
  static QueryPredictorOptions FromConfig(const QueryPredictorConfig& config);
  // INVALID_ARGUMENT naming the field: 1 ≤ lags ≤ 4, lags < window ≤ 64, ε ≥ 0.
  absl::Status Validate() const;
  // "ridge/p4/shared/pre_rope", "last_query" (for tables and JSON).
  std::string Name() const;
};

// "per_head", "shared", "last_query".
std::string_view QueryPredictionModeName(kernels::QueryPredictionMode mode);
absl::StatusOr<kernels::QueryPredictionMode> ParseQueryPredictionMode(std::string_view name);

// The windows of one sequence, all layers. Not thread-safe (the decode loop owns it).
class QueryPredictor {
 public:
  // `rope_inv_freq` [head_dim / 2] (kernels::ComputeRopeInvFreq) is used by pre-RoPE regression
  // and must outlive the predictor. `options` must be valid (CHECKed).
  QueryPredictor(const QueryPredictorOptions& options, int num_layers, int num_heads, int head_dim,
                 const float* rope_inv_freq);

  // Appends the post-RoPE query [num_heads, head_dim] of `position` to the layer's window.
  void Push(int layer, const float* query, int32_t position);
  // Appends queries [num_tokens, num_heads, head_dim] of positions first_position.. (a prefill
  // chunk); only the last `window` of them are kept, so only those are copied.
  void PushMany(int layer, const float* queries, int num_tokens, int32_t first_position);
  // out [num_heads, head_dim]: the predicted post-RoPE query of `position` (normally the newest
  // pushed position + 1). An empty window predicts zeros.
  void Predict(int layer, int32_t position, float* out) const;

  // Queries in the layer's window (≤ window).
  int count(int layer) const { return layers_[layer].count; }
  const QueryPredictorOptions& options() const { return options_; }

 private:
  struct LayerWindow {
    std::vector<float> window;  // [num_heads, window, head_dim] (kernels' QueryWindowShape, 1 seq)
    int32_t count = 0;
    int32_t write_pos = 0;
  };

  QueryPredictorOptions options_;
  kernels::QueryPredictionParams params_;
  kernels::QueryWindowShape shape_;
  const float* rope_inv_freq_;
  std::vector<LayerWindow> layers_;
  std::vector<float> staging_;  // one query, while it is un-rotated
};

}  // namespace asyncspade
