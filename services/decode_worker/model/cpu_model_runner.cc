#include "services/decode_worker/model/cpu_model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "glog/logging.h"
#include "kernels/activation.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/paged_kv_append.h"
#include "kernels/rms_norm.h"
#include "kernels/rope.h"
#include "services/decode_worker/model/dense_attention_stage.h"

namespace asyncspade {
namespace {

template <typename T>
void GrowTo(std::vector<T>* buffer, size_t size) {
  if (buffer->size() < size) buffer->resize(size);
}

// Copies columns [col, col + width) of every row of a [rows, stride] matrix into a dense
// [rows, width] matrix.
void CopyColumns(const float* src, int rows, int stride, int col, int width, float* dst) {
  for (int r = 0; r < rows; ++r) {
    std::memcpy(dst + int64_t{r} * width, src + int64_t{r} * stride + col, sizeof(float) * width);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuModelRunner>> CpuModelRunner::Create(
    std::shared_ptr<const CpuModelWeights> weights, const CpuModelRunnerOptions& options,
    std::unique_ptr<AttentionStage> attention) {
  if (weights == nullptr) return absl::InvalidArgumentError("CpuModelRunner needs model weights");
  if (options.num_kv_blocks <= 0 || options.page_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache needs a positive block count and page size, got ",
                                                   options.num_kv_blocks, " blocks of ", options.page_size));
  }
  static const bool advised = [] {
    if (std::string advice = kernels::cpu::BlasCoreAdvice(); !advice.empty()) LOG(WARNING) << advice;
    return true;
  }();
  (void)advised;
  auto runner = std::unique_ptr<CpuModelRunner>(new CpuModelRunner());
  const ModelConfig& config = weights->config();
  runner->weights_ = std::move(weights);
  runner->attention_ = attention != nullptr ? std::move(attention) : std::make_unique<DenseAttentionStage>();
  runner->kv_layout_ = kernels::PagedKvLayout{options.num_kv_blocks, config.num_kv_heads,
                                              options.page_size, config.head_dim};
  const size_t layer_floats = static_cast<size_t>(runner->kv_layout_.block_stride()) * options.num_kv_blocks;
  runner->k_cache_.assign(config.num_layers, std::vector<float>(layer_floats, 0.0f));
  runner->v_cache_.assign(config.num_layers, std::vector<float>(layer_floats, 0.0f));
  runner->rope_inv_freq_ = kernels::ComputeRopeInvFreq(config.head_dim, config.rope_theta, config.rope_scaling);
  return runner;
}

LayerKvCache CpuModelRunner::layer_kv_cache(int layer) {
  return LayerKvCache{kv_layout_, k_cache_[layer].data(), v_cache_[layer].data()};
}

size_t CpuModelRunner::kv_cache_bytes() const {
  return 2 * k_cache_.size() * static_cast<size_t>(kv_layout_.block_stride()) * kv_layout_.num_blocks *
         sizeof(float);
}

absl::Status CpuModelRunner::BuildLayout(const ForwardBatch& batch) {
  const ModelConfig& config = weights_->config();
  AttentionBatchLayout& L = layout_;
  const int num_seqs = static_cast<int>(batch.sequences.size());
  L.num_seqs = num_seqs;
  L.sequence_ids.clear();
  L.q_indptr.assign(1, 0);
  L.kv_lens.clear();
  L.positions.clear();
  L.slots.clear();
  L.sparse.clear();
  L.step = batch.step;
  token_ids_.clear();
  logit_token_rows_.clear();
  L.max_blocks_per_seq = 0;
  for (const ForwardSequence& s : batch.sequences) {
    L.max_blocks_per_seq = std::max(L.max_blocks_per_seq, static_cast<int>(s.block_table.size()));
  }
  L.block_tables.assign(static_cast<size_t>(num_seqs) * L.max_blocks_per_seq, 0);

  const int page = kv_layout_.page_size;
  for (int b = 0; b < num_seqs; ++b) {
    const ForwardSequence& s = batch.sequences[b];
    const int n = static_cast<int>(s.tokens.size());
    if (n == 0) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id, " has no new tokens"));
    }
    if (s.start_position < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s.sequence_id, " has negative start position ", s.start_position));
    }
    const int64_t kv_len = int64_t{s.start_position} + n;
    if (static_cast<int64_t>(s.block_table.size()) * page < kv_len) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id, " needs ", kv_len,
                                                     " cache slots but its block table holds ",
                                                     s.block_table.size() * page));
    }
    for (size_t j = 0; j < s.block_table.size(); ++j) {
      const int32_t block = s.block_table[j];
      if (block < 0 || block >= kv_layout_.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id, " references KV block ",
                                                       block, " outside [0, ", kv_layout_.num_blocks, ")"));
      }
      L.block_tables[static_cast<size_t>(b) * L.max_blocks_per_seq + j] = block;
    }
    for (int i = 0; i < n; ++i) {
      const int32_t id = s.tokens[i];
      if (id < 0 || id >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id, " has token id ", id,
                                                       " outside the vocabulary [0, ", config.vocab_size, ")"));
      }
      const int position = s.start_position + i;
      token_ids_.push_back(id);
      L.positions.push_back(position);
      L.slots.push_back(int64_t{s.block_table[position / page]} * page + position % page);
    }
    const int first_row = L.q_indptr.back();
    if (s.logits == LogitsWanted::kAll) {
      for (int i = 0; i < n; ++i) logit_token_rows_.push_back(first_row + i);
    } else if (s.logits == LogitsWanted::kLast) {
      logit_token_rows_.push_back(first_row + n - 1);
    }
    L.sequence_ids.push_back(s.sequence_id);
    L.sparse.push_back(s.sparse);
    L.q_indptr.push_back(first_row + n);
    L.kv_lens.push_back(static_cast<int32_t>(kv_len));
  }
  L.num_tokens = L.q_indptr.back();
  return absl::OkStatus();
}

void CpuModelRunner::EnsureActivationCapacity(int num_tokens) {
  const ModelConfig& c = weights_->config();
  const size_t n = static_cast<size_t>(num_tokens);
  const size_t qkv_dim = static_cast<size_t>(c.q_size() + 2 * c.kv_size());
  GrowTo(&hidden_, n * c.hidden_size);
  GrowTo(&residual_, n * c.hidden_size);
  GrowTo(&qkv_, n * qkv_dim);
  GrowTo(&q_, n * c.q_size());
  GrowTo(&k_, n * c.kv_size());
  GrowTo(&v_, n * c.kv_size());
  GrowTo(&attn_out_, n * c.q_size());
  GrowTo(&gate_up_, n * 2 * c.intermediate_size);
  GrowTo(&mlp_act_, n * c.intermediate_size);
  GrowTo(&head_in_, n * c.hidden_size);
}

absl::Status CpuModelRunner::Forward(const ForwardBatch& batch, ForwardOutput* output) {
  const ModelConfig& c = weights_->config();
  RETURN_IF_ERROR(BuildLayout(batch));
  const int n = layout_.num_tokens;
  const int hidden = c.hidden_size;
  const int q_size = c.q_size();
  const int kv_size = c.kv_size();
  const int qkv_dim = q_size + 2 * kv_size;
  const int inter = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  EnsureActivationCapacity(n);

  output->vocab_size = c.vocab_size;
  output->row_offsets.assign(1, 0);
  for (const ForwardSequence& s : batch.sequences) {
    const int rows = s.logits == LogitsWanted::kAll ? static_cast<int>(s.tokens.size())
                     : s.logits == LogitsWanted::kLast ? 1 : 0;
    output->row_offsets.push_back(output->row_offsets.back() + rows);
  }
  const int num_logit_rows = output->row_offsets.back();
  output->logits.resize(static_cast<size_t>(num_logit_rows) * c.vocab_size);
  if (n == 0) return absl::OkStatus();

  namespace k = kernels::cpu;
  k::Embedding(token_ids_.data(), n, weights_->embed_tokens(), hidden, hidden_.data());
  for (int l = 0; l < c.num_layers; ++l) {
    const CpuLayerWeights& w = weights_->layer(l);
    if (l == 0) {
      std::memcpy(residual_.data(), hidden_.data(), sizeof(float) * n * hidden);
      k::RmsNorm(hidden_.data(), w.input_norm.data(), n, hidden, eps, hidden_.data());
    } else {
      k::FusedAddRmsNorm(hidden_.data(), residual_.data(), w.input_norm.data(), n, hidden, eps);
    }

    k::Linear(hidden_.data(), w.qkv_proj.data(), w.qkv_bias.empty() ? nullptr : w.qkv_bias.data(), n,
              qkv_dim, hidden, qkv_.data());
    CopyColumns(qkv_.data(), n, qkv_dim, 0, q_size, q_.data());
    CopyColumns(qkv_.data(), n, qkv_dim, q_size, kv_size, k_.data());
    CopyColumns(qkv_.data(), n, qkv_dim, q_size + kv_size, kv_size, v_.data());
    if (c.qk_norm) {
      k::RmsNorm(q_.data(), w.q_norm.data(), n * c.num_heads, c.head_dim, eps, q_.data());
      k::RmsNorm(k_.data(), w.k_norm.data(), n * c.num_kv_heads, c.head_dim, eps, k_.data());
    }
    k::Rope(q_.data(), k_.data(), layout_.positions.data(), n, c.num_heads, c.num_kv_heads, c.head_dim,
            rope_inv_freq_.data());

    const QkvView qkv{q_.data(), k_.data(), v_.data(), c.num_heads, c.num_kv_heads, c.head_dim};
    attention_->OnQkv(l, layout_, qkv);
    const LayerKvCache cache = layer_kv_cache(l);
    k::PagedKvAppend(k_.data(), v_.data(), n, layout_.slots.data(), kv_layout_, cache.k, cache.v);
    RETURN_IF_ERROR(attention_->Attend(l, layout_, qkv, cache, scale, attn_out_.data()));

    k::Linear(attn_out_.data(), w.o_proj.data(), w.o_bias.empty() ? nullptr : w.o_bias.data(), n, hidden,
              q_size, hidden_.data());
    k::FusedAddRmsNorm(hidden_.data(), residual_.data(), w.post_attention_norm.data(), n, hidden, eps);
    k::Linear(hidden_.data(), w.gate_up_proj.data(), nullptr, n, 2 * inter, hidden, gate_up_.data());
    k::SiluAndMul(gate_up_.data(), n, inter, mlp_act_.data());
    k::Linear(mlp_act_.data(), w.down_proj.data(), nullptr, n, hidden, inter, hidden_.data());
  }

  if (num_logit_rows == 0) return absl::OkStatus();
  // Only the rows that produce logits need the final norm and the (large) head GEMM.
  for (int r = 0; r < num_logit_rows; ++r) {
    const int64_t row = logit_token_rows_[r];
    float* dst = head_in_.data() + int64_t{r} * hidden;
    const float* x = hidden_.data() + row * hidden;
    const float* res = residual_.data() + row * hidden;
    for (int j = 0; j < hidden; ++j) dst[j] = x[j] + res[j];
  }
  k::RmsNorm(head_in_.data(), weights_->final_norm().data(), num_logit_rows, hidden, eps, head_in_.data());
  k::Linear(head_in_.data(), weights_->lm_head(), nullptr, num_logit_rows, c.vocab_size, hidden,
            output->logits.data());
  return absl::OkStatus();
}

}  // namespace asyncspade
