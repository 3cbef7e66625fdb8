#include "services/decode_worker/policy/sparse_attention_stage.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "glog/logging.h"
#include "kernels/paged_attention.h"
#include "kernels/quest.h"
#include "kernels/rope.h"
#include "kernels/sparse_attention.h"
#include "kernels/topk.h"

namespace asyncspade {

kernels::GroupAggregation KernelAggregation(ScoreAggregation aggregation) {
  switch (aggregation) {
    case ScoreAggregation::kSum: return kernels::GroupAggregation::kSum;
    case ScoreAggregation::kMax: return kernels::GroupAggregation::kMax;
    case ScoreAggregation::kSoftmaxSum: return kernels::GroupAggregation::kSoftmaxSum;
  }
  return kernels::GroupAggregation::kSum;
}

absl::StatusOr<std::unique_ptr<SparseAttentionStage>> SparseAttentionStage::Create(
    const ModelConfig& model, SparseAttentionStageOptions options) {
  RETURN_IF_ERROR(options.default_config.Validate("sparse."));
  if (options.predictor.has_value()) {
    RETURN_IF_ERROR(options.predictor->Validate());
  } else {
    // The config accepts wider ranges than the predictor kernels implement (W ≤ 64, p ≤ 4).
    RETURN_IF_ERROR(Annotate(QueryPredictorOptions::FromConfig(options.default_config.predictor).Validate(),
                             "sparse.predictor: the query predictor supports window <= 64 and lags <= 4"));
  }
  if (model.num_layers <= 0 || model.num_heads <= 0 || model.num_kv_heads <= 0 || model.head_dim <= 0) {
    return absl::InvalidArgumentError("sparse attention stage: the model geometry is empty");
  }
  if (options.default_config.policy == SparsePolicy::kAsyncSpade && options.selector_pool == nullptr) {
    LOG(WARNING) << "sparse attention: the default policy is asyncspade but no selector pool is "
                    "configured; asyncspade sequences will attend densely (counted as fallbacks)";
  }
  return std::unique_ptr<SparseAttentionStage>(new SparseAttentionStage(model, std::move(options)));
}

SparseAttentionStage::SparseAttentionStage(const ModelConfig& model, SparseAttentionStageOptions options)
    : model_(model), options_(std::move(options)) {
  rope_inv_freq_ = kernels::ComputeRopeInvFreq(model.head_dim, model.rope_theta, model.rope_scaling);
  quest_metadata_.resize(model.num_layers);
}

int64_t SparseAttentionStage::SparseAbove(const SparsePolicyConfig& config) const {
  return options_.dense_below_threshold ? config.SparseFromContext() : 0;
}

void SparseAttentionStage::Count(SequenceState& state, const SparseAttentionCounters& delta) {
  state.counters += delta;
  totals_ += delta;
}

SparseAttentionStage::SequenceState& SparseAttentionStage::StateFor(const AttentionBatchLayout& layout, int b) {
  const int64_t id = layout.sequence_ids[b];
  auto it = states_.find(id);
  if (it != states_.end()) return it->second;
  SequenceState& state = states_[id];
  const SparsePolicyConfig* config = b < static_cast<int>(layout.sparse.size()) ? layout.sparse[b] : nullptr;
  state.config = config != nullptr ? *config : options_.default_config;
  if (state.config.policy == SparsePolicy::kAsyncSpade) {
    QueryPredictorOptions predictor =
        options_.predictor.value_or(QueryPredictorOptions::FromConfig(state.config.predictor));
    if (const absl::Status valid = predictor.Validate(); !valid.ok()) {
      // Only a request's own full config can get here (the default was validated at Create).
      LOG(WARNING) << "sequence " << id << ": " << valid << "; clamping the predictor to the supported ranges";
      predictor.lags = std::clamp(predictor.lags, 1, kernels::kMaxQueryPredictionLags);
      predictor.window = std::clamp(predictor.window, predictor.lags + 1, kernels::kMaxQueryWindow);
      if (!(predictor.ridge_epsilon >= 0.0)) predictor.ridge_epsilon = 1e-3;
    }
    state.predictor = std::make_unique<QueryPredictor>(predictor, model_.num_layers, model_.num_heads,
                                                       model_.head_dim, rope_inv_freq_.data());
    state.selection.resize(model_.num_layers);
  }
  return state;
}

const SparsePolicyConfig* SparseAttentionStage::SequenceConfig(int64_t sequence_id) const {
  auto it = states_.find(sequence_id);
  return it == states_.end() ? nullptr : &it->second.config;
}

SparseAttentionCounters SparseAttentionStage::SequenceCounters(int64_t sequence_id) const {
  auto it = states_.find(sequence_id);
  return it == states_.end() ? SparseAttentionCounters{} : it->second.counters;
}

void SparseAttentionStage::OnSequenceReleased(int64_t sequence_id) {
  auto it = states_.find(sequence_id);
  if (it == states_.end()) return;
  if (it->second.config.policy == SparsePolicy::kAsyncSpade && options_.selector_pool != nullptr) {
    options_.selector_pool->Detach(sequence_id);
  }
  states_.erase(it);
}

void SparseAttentionStage::OnQkv(int layer, const AttentionBatchLayout& layout, const QkvView& qkv) {
  SelectorPool* pool = options_.selector_pool;
  if (layer == 0 && pool != nullptr && (!began_step_ || layout.step != last_step_)) {
    pool->BeginStep(layout.step);
    began_step_ = true;
    last_step_ = layout.step;
  }
  const int hq = qkv.num_q_heads, hkv = qkv.num_kv_heads, d = qkv.head_dim;
  const size_t q_floats = size_t(hq) * d, k_floats = size_t(hkv) * d;
  SelectRequest request;
  request.layer = layer;
  request.step = layout.step;
  for (int b = 0; b < layout.num_seqs; ++b) {
    SequenceState& state = StateFor(layout, b);
    if (state.config.policy != SparsePolicy::kAsyncSpade) continue;
    const int64_t id = layout.sequence_ids[b];
    const int r0 = layout.q_indptr[b], n = layout.q_indptr[b + 1] - r0;
    const int32_t first = layout.positions[r0];
    const int32_t t = first + n - 1;  // the newest position; the next query is for t + 1
    state.predictor->PushMany(layer, qkv.q + r0 * q_floats, n, first);
    state.selection[layer] =
        (n == 1 && pool != nullptr && pool->ServesLayer(layer)) ? pool->Latest(id, layer) : nullptr;
    if (pool == nullptr) continue;

    if (n > 1) pool->AppendKeys(layer, id, first, n - 1, qkv.k + r0 * k_floats);
    const float* key_t = qkv.k + (r0 + n - 1) * k_floats;
    const bool next_is_sparse = int64_t{t} + 2 > SparseAbove(state.config);  // kv_len at t + 1
    if (!next_is_sparse) {
      pool->AppendKeys(layer, id, t, 1, key_t);
      continue;
    }
    const size_t at = request.predicted_queries.size();
    request.predicted_queries.resize(at + q_floats);
    state.predictor->Predict(layer, t + 1, request.predicted_queries.data() + at);
    if (options_.observer != nullptr) {
      options_.observer->OnPrediction(id, layer, t + 1, request.predicted_queries.data() + at);
    }
    request.sequence_ids.push_back(id);
    request.positions.push_back(t);
    request.new_keys.insert(request.new_keys.end(), key_t, key_t + k_floats);
    request.budgets.push_back(state.config.budget);
  }
  if (pool != nullptr && !request.sequence_ids.empty()) pool->Submit(std::move(request));
}

void SparseAttentionStage::AttendDense(const AttentionBatchLayout& layout, int b, const QkvView& qkv,
                                       const LayerKvCache& cache, float scale, float* out) {
  if (!options_.compute_dense_rows) return;
  const int r0 = layout.q_indptr[b];
  const int32_t q_indptr[2] = {0, layout.q_indptr[b + 1] - r0};
  const size_t q_floats = size_t(qkv.num_q_heads) * qkv.head_dim;
  kernels::cpu::PagedAttention(qkv.q + r0 * q_floats, qkv.num_q_heads, q_indptr, &layout.kv_lens[b], 1,
                               layout.block_tables.data() + size_t(b) * layout.max_blocks_per_seq,
                               layout.max_blocks_per_seq, cache.layout, cache.k, cache.v, scale,
                               out + r0 * q_floats);
}

void SparseAttentionStage::AttendSelected(const AttentionBatchLayout& layout, int b, const SparsePolicyConfig& config,
                                          const int32_t* selected, int num_selected, int recent,
                                          const QkvView& qkv, const LayerKvCache& cache, float scale, float* out) {
  const int hkv = qkv.num_kv_heads;
  const int max_indices = config.sinks + num_selected + recent;
  indices_.resize(size_t(hkv) * max_indices);
  counts_.resize(hkv);
  kernels::cpu::BuildSparseIndices(selected, 1, hkv, num_selected, &layout.kv_lens[b], config.sinks, recent,
                                   indices_.data(), max_indices, counts_.data());
  const int r0 = layout.q_indptr[b];
  const size_t q_floats = size_t(qkv.num_q_heads) * qkv.head_dim;
  kernels::cpu::SparseAttention(qkv.q + r0 * q_floats, 1, qkv.num_q_heads, indices_.data(), counts_.data(),
                                max_indices, layout.block_tables.data() + size_t(b) * layout.max_blocks_per_seq,
                                layout.max_blocks_per_seq, cache.layout, cache.k, cache.v, scale,
                                out + r0 * q_floats);
}

void SparseAttentionStage::SelectOracle(const AttentionBatchLayout& layout, int b, const SparsePolicyConfig& config,
                                        const QkvView& qkv, const LayerKvCache& cache, float scale) {
  const int hkv = qkv.num_kv_heads;
  const int32_t kv_len = layout.kv_lens[b];
  kernels::KeyScoringParams params;
  params.scale = scale;
  params.sinks = config.sinks;
  params.recent_exclude = config.recent;
  params.aggregation = KernelAggregation(config.aggregation);
  scores_.resize(size_t(hkv) * kv_len);
  const int r0 = layout.q_indptr[b];
  kernels::cpu::ScoreKeys(qkv.q + r0 * size_t(qkv.num_q_heads) * qkv.head_dim, 1, qkv.num_q_heads, &kv_len, kv_len,
                          layout.block_tables.data() + size_t(b) * layout.max_blocks_per_seq,
                          layout.max_blocks_per_seq, cache.layout, cache.k, params, scores_.data(), kv_len);
  selected_.resize(size_t(hkv) * config.budget);
  kernels::cpu::TopK(scores_.data(), hkv, kv_len, nullptr, kv_len, config.budget, selected_.data(), nullptr);
}

absl::Status SparseAttentionStage::SelectQuest(int layer, const AttentionBatchLayout& layout, int b,
                                               const SparsePolicyConfig& config, const QkvView& qkv,
                                               const LayerKvCache& cache, int* num_selected) {
  const int page = cache.layout.page_size;
  const int hkv = qkv.num_kv_heads;
  const int32_t kv_len = layout.kv_lens[b];
  const int max_pages = (kv_len + page - 1) / page;
  const int pages_k = std::max(1, config.budget / page);
  kernels::QuestScoringParams params;
  params.sinks = config.sinks;
  params.recent = config.recent;
  params.aggregation = config.aggregation == ScoreAggregation::kMax ? kernels::GroupAggregation::kMax
                                                                     : kernels::GroupAggregation::kSum;
  scores_.resize(size_t(hkv) * max_pages);
  const int r0 = layout.q_indptr[b];
  kernels::cpu::QuestScorePages(qkv.q + r0 * size_t(qkv.num_q_heads) * qkv.head_dim, 1, qkv.num_q_heads, &kv_len,
                                layout.block_tables.data() + size_t(b) * layout.max_blocks_per_seq,
                                layout.max_blocks_per_seq, cache.layout, quest_metadata_[layer].data(), params,
                                scores_.data(), max_pages, max_pages);
  pages_.resize(size_t(hkv) * pages_k);
  kernels::cpu::TopK(scores_.data(), hkv, max_pages, nullptr, max_pages, pages_k, pages_.data(), nullptr);
  *num_selected = pages_k * page;
  selected_.resize(size_t(hkv) * *num_selected);
  kernels::cpu::QuestExpandPages(pages_.data(), 1, hkv, pages_k, &kv_len, page, selected_.data());
  return absl::OkStatus();
}

absl::Status SparseAttentionStage::Attend(int layer, const AttentionBatchLayout& layout, const QkvView& qkv,
                                          const LayerKvCache& cache, float scale, float* out) {
  const int hkv = qkv.num_kv_heads;
  // Quest bounds must cover every page a quest sequence wrote, prefill included.
  for (int b = 0; b < layout.num_seqs; ++b) {
    const SequenceState& state = StateFor(layout, b);
    if (state.config.policy != SparsePolicy::kQuest) continue;
    if (state.config.quest_page_size != cache.layout.page_size) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sequence ", layout.sequence_ids[b], ": quest_page_size ", state.config.quest_page_size,
          " differs from the KV cache page size ", cache.layout.page_size, "; Quest pages are KV-cache pages"));
    }
    std::vector<float>& metadata = quest_metadata_[layer];
    const size_t floats = size_t(cache.layout.num_blocks) * hkv * 2 * qkv.head_dim;
    if (metadata.size() != floats) metadata.assign(floats, 0.0f);
    const int r0 = layout.q_indptr[b];
    kernels::cpu::QuestUpdateMetadata(cache.k, cache.layout, layout.slots.data() + r0, layout.q_indptr[b + 1] - r0,
                                      metadata.data());
  }

  for (int b = 0; b < layout.num_seqs; ++b) {
    SequenceState& state = StateFor(layout, b);
    const SparsePolicyConfig& config = state.config;
    const int n = layout.q_indptr[b + 1] - layout.q_indptr[b];
    const int32_t kv_len = layout.kv_lens[b];
    if (n > 1 || config.policy == SparsePolicy::kDense || kv_len <= SparseAbove(config)) {
      AttendDense(layout, b, qkv, cache, scale, out);
      continue;
    }
    SparseAttendRecord record;
    record.sequence_id = layout.sequence_ids[b];
    record.layer = layer;
    record.position = layout.positions[layout.q_indptr[b]];
    record.step = layout.step;
    record.policy = config.policy;
    record.num_kv_heads = hkv;
    record.recent = config.recent;
    SparseAttentionCounters delta;
    switch (config.policy) {
      case SparsePolicy::kDense:
        break;  // handled above
      case SparsePolicy::kOracle: {
        SelectOracle(layout, b, config, qkv, cache, scale);
        record.selected = selected_.data();
        record.num_selected = config.budget;
        break;
      }
      case SparsePolicy::kQuest: {
        RETURN_IF_ERROR(SelectQuest(layer, layout, b, config, qkv, cache, &record.num_selected));
        record.selected = selected_.data();
        break;
      }
      case SparsePolicy::kAsyncSpade: {
        const std::shared_ptr<const Selection>& selection = state.selection[layer];
        const bool usable = selection != nullptr && selection->budget > 0 &&
                            selection->indices.size() == size_t(hkv) * selection->budget;
        if (!usable) {
          delta.dense_fallbacks = 1;
          Count(state, delta);
          AttendDense(layout, b, qkv, cache, scale, out);
          continue;
        }
        // A selector configured with a larger budget than this request's: keep the request's
        // budget (the selector's top ranks first; a GPU selector's order within a row is
        // unspecified, so this then keeps an arbitrary subset of its top-k).
        const int take = std::min(selection->budget, config.budget);
        if (take == selection->budget) {
          record.selected = selection->indices.data();
        } else {
          selected_.resize(size_t(hkv) * take);
          for (int h = 0; h < hkv; ++h) {
            std::memcpy(&selected_[size_t(h) * take], &selection->indices[size_t(h) * selection->budget],
                        sizeof(int32_t) * take);
          }
          record.selected = selected_.data();
        }
        record.num_selected = take;
        record.stale = selection->for_position < record.position;
        // The selector excluded the positions the worker would attend as "recent" at for_position;
        // d steps later the window has moved on by d, so widen it by d: nothing falls in between.
        if (record.stale) record.recent = config.recent + (record.position - selection->for_position);
        delta.stale_selections = record.stale ? 1 : 0;
        delta.selections_used = 1;
        delta.selection_age_steps_sum =
            layout.step >= selection->step ? static_cast<int64_t>(layout.step - selection->step) : 0;
        break;
      }
    }
    delta.sparse_layer_steps = 1;
    Count(state, delta);
    AttendSelected(layout, b, config, record.selected, record.num_selected, record.recent, qkv, cache, scale, out);
    if (options_.observer != nullptr) options_.observer->OnSparseAttend(record);
  }
  return absl::OkStatus();
}

}  // namespace asyncspade
