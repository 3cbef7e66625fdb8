#include "services/decode_worker/policy/query_predictor.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "kernels/rope.h"

namespace asyncspade {

QueryPredictorOptions QueryPredictorOptions::FromConfig(const QueryPredictorConfig& config) {
  QueryPredictorOptions options;
  options.window = config.window;
  options.lags = config.lags;
  options.ridge_epsilon = config.ridge_epsilon;
  switch (config.mode) {
    case QueryPredictorMode::kRidge: options.mode = kernels::QueryPredictionMode::kRidgePerHead; break;
    case QueryPredictorMode::kRidgeShared: options.mode = kernels::QueryPredictionMode::kRidgeSharedPerLayer; break;
    case QueryPredictorMode::kLastQuery: options.mode = kernels::QueryPredictionMode::kLastQuery; break;
  }
  options.space = config.rope;
  return options;
}

absl::Status QueryPredictorOptions::Validate() const {
  if (lags < 1 || lags > kernels::kMaxQueryPredictionLags) {
    return absl::InvalidArgumentError(absl::StrCat("predictor.lags is ", lags, "; it must be in [1, ",
                                                   kernels::kMaxQueryPredictionLags, "]"));
  }
  if (window <= lags || window > kernels::kMaxQueryWindow) {
    return absl::InvalidArgumentError(absl::StrCat("predictor.window is ", window, "; it must be in (lags = ",
                                                   lags, ", ", kernels::kMaxQueryWindow, "]"));
  }
  if (!(ridge_epsilon >= 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("predictor.ridge_epsilon is ", ridge_epsilon,
                                                   "; it must be >= 0"));
  }
  return absl::OkStatus();
}

std::string QueryPredictorOptions::Name() const {
  if (mode == kernels::QueryPredictionMode::kLastQuery) return "last_query";
  return absl::StrCat("ridge/p", lags, "/", std::string(QueryPredictionModeName(mode)), "/",
                      space == QueryPredictorRope::kPre ? "pre_rope" : "post_rope");
}

std::string_view QueryPredictionModeName(kernels::QueryPredictionMode mode) {
  switch (mode) {
    case kernels::QueryPredictionMode::kLastQuery: return "last_query";
    case kernels::QueryPredictionMode::kRidgePerHead: return "per_head";
    case kernels::QueryPredictionMode::kRidgeSharedPerLayer: return "shared";
  }
  return "?";
}

absl::StatusOr<kernels::QueryPredictionMode> ParseQueryPredictionMode(std::string_view name) {
  for (auto mode : {kernels::QueryPredictionMode::kRidgePerHead, kernels::QueryPredictionMode::kRidgeSharedPerLayer,
                    kernels::QueryPredictionMode::kLastQuery}) {
    if (name == QueryPredictionModeName(mode)) return mode;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown query prediction mode '", std::string(name), "'; use per_head, shared or last_query"));
}

QueryPredictor::QueryPredictor(const QueryPredictorOptions& options, int num_layers, int num_heads, int head_dim,
                               const float* rope_inv_freq)
    : options_(options), rope_inv_freq_(rope_inv_freq) {
  const absl::Status valid = options.Validate();
  CHECK(valid.ok()) << valid;
  CHECK(options.space == QueryPredictorRope::kPost || rope_inv_freq != nullptr)
      << "pre-RoPE query regression needs the RoPE frequencies";
  params_.mode = options.mode;
  params_.lags = options.lags;
  params_.ridge_epsilon = static_cast<float>(options.ridge_epsilon);
  shape_ = kernels::QueryWindowShape{1, num_heads, options.window, head_dim};
  layers_.resize(num_layers);
  for (LayerWindow& layer : layers_) {
    layer.window.assign(size_t(num_heads) * options.window * head_dim, 0.0f);
  }
  staging_.resize(size_t(num_heads) * head_dim);
}

void QueryPredictor::Push(int layer, const float* query, int32_t position) {
  LayerWindow& w = layers_[layer];
  const float* source = query;
  if (options_.space == QueryPredictorRope::kPre) {
    std::memcpy(staging_.data(), query, sizeof(float) * staging_.size());
    // Rotating by −position is the inverse of the rotation RoPE applied (cos is even, sin odd).
    const int32_t back = -position;
    kernels::cpu::Rope(staging_.data(), nullptr, &back, 1, shape_.num_heads, 0, shape_.head_dim, rope_inv_freq_);
    source = staging_.data();
  }
  kernels::cpu::AppendToQueryWindow(source, shape_, w.window.data(), &w.count, &w.write_pos);
}

void QueryPredictor::PushMany(int layer, const float* queries, int num_tokens, int32_t first_position) {
  const int skip = std::max(0, num_tokens - options_.window);
  const size_t stride = size_t(shape_.num_heads) * shape_.head_dim;
  for (int i = skip; i < num_tokens; ++i) Push(layer, queries + i * stride, first_position + i);
}

void QueryPredictor::Predict(int layer, int32_t position, float* out) const {
  const LayerWindow& w = layers_[layer];
  kernels::cpu::PredictQueries(w.window.data(), shape_, &w.count, &w.write_pos, params_, out);
  if (options_.space == QueryPredictorRope::kPre) {
    kernels::cpu::Rope(out, nullptr, &position, 1, shape_.num_heads, 0, shape_.head_dim, rope_inv_freq_);
  }
}

}  // namespace asyncspade
