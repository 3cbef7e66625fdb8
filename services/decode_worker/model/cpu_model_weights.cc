#include "services/decode_worker/model/cpu_model_weights.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace asyncspade {
namespace {

// Reads several [rows_i, cols] tensors and stacks them row-wise into one matrix.
absl::StatusOr<std::vector<float>> ReadStacked(const Checkpoint& checkpoint,
                                               const std::vector<std::string>& names,
                                               const std::vector<int64_t>& rows, int64_t cols) {
  std::vector<float> stacked;
  for (size_t i = 0; i < names.size(); ++i) {
    std::vector<int64_t> shape = {rows[i]};
    if (cols > 0) shape.push_back(cols);
    ASSIGN_OR_RETURN(std::vector<float> part, checkpoint.ReadFloat32(names[i], shape));
    stacked.insert(stacked.end(), part.begin(), part.end());
  }
  return stacked;
}

absl::Status ValidateForCpu(const ModelConfig& c) {
  if (c.head_dim % 2 != 0 || c.head_dim > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", c.head_dim, " is not supported by the CPU runner (RoPE needs an even head_dim ≤ 1024)"));
  }
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_attention_heads ", c.num_heads,
                                                   " is not a multiple of num_key_value_heads ",
                                                   c.num_kv_heads));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuModelWeights>> CpuModelWeights::Load(const std::string& model_dir) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(model_dir));
  return FromCheckpoint(config, *checkpoint);
}

absl::StatusOr<std::unique_ptr<CpuModelWeights>> CpuModelWeights::FromCheckpoint(
    const ModelConfig& config, const Checkpoint& checkpoint) {
  RETURN_IF_ERROR(ValidateForCpu(config));
  auto weights = std::unique_ptr<CpuModelWeights>(new CpuModelWeights());
  weights->config_ = config;
  const int64_t hidden = config.hidden_size;
  const int64_t vocab = config.vocab_size;
  const int64_t inter = config.intermediate_size;
  const int64_t q_size = config.q_size();
  const int64_t kv_size = config.kv_size();

  ASSIGN_OR_RETURN(weights->embed_tokens_,
                   checkpoint.ReadFloat32("model.embed_tokens.weight", {vocab, hidden}));
  // HF ties the head to the embedding whenever tie_word_embeddings is set, even if the file also
  // carries an lm_head.weight.
  if (!config.tie_word_embeddings) {
    if (!checkpoint.Has("lm_head.weight")) {
      return absl::NotFoundError(
          "checkpoint has no 'lm_head.weight' and config.json sets tie_word_embeddings=false; "
          "set tie_word_embeddings=true if the head shares the embedding");
    }
    ASSIGN_OR_RETURN(weights->lm_head_, checkpoint.ReadFloat32("lm_head.weight", {vocab, hidden}));
  }
  ASSIGN_OR_RETURN(weights->final_norm_, checkpoint.ReadFloat32("model.norm.weight", {hidden}));

  weights->layers_.resize(config.num_layers);
  for (int i = 0; i < config.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    const std::string attn = p + "self_attn.";
    const std::string mlp = p + "mlp.";
    CpuLayerWeights& layer = weights->layers_[i];
    ASSIGN_OR_RETURN(layer.input_norm, checkpoint.ReadFloat32(p + "input_layernorm.weight", {hidden}));
    ASSIGN_OR_RETURN(layer.post_attention_norm,
                     checkpoint.ReadFloat32(p + "post_attention_layernorm.weight", {hidden}));
    ASSIGN_OR_RETURN(layer.qkv_proj,
                     ReadStacked(checkpoint, {attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"},
                                 {q_size, kv_size, kv_size}, hidden));
    if (config.attention_bias) {
      ASSIGN_OR_RETURN(layer.qkv_bias,
                       ReadStacked(checkpoint, {attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"},
                                   {q_size, kv_size, kv_size}, 0));
    }
    if (config.qk_norm) {
      ASSIGN_OR_RETURN(layer.q_norm, checkpoint.ReadFloat32(attn + "q_norm.weight", {config.head_dim}));
      ASSIGN_OR_RETURN(layer.k_norm, checkpoint.ReadFloat32(attn + "k_norm.weight", {config.head_dim}));
    }
    ASSIGN_OR_RETURN(layer.o_proj, checkpoint.ReadFloat32(attn + "o_proj.weight", {hidden, q_size}));
    if (config.o_proj_bias) {
      ASSIGN_OR_RETURN(layer.o_bias, checkpoint.ReadFloat32(attn + "o_proj.bias", {hidden}));
    }
    ASSIGN_OR_RETURN(layer.gate_up_proj,
                     ReadStacked(checkpoint, {mlp + "gate_proj.weight", mlp + "up_proj.weight"},
                                 {inter, inter}, hidden));
    ASSIGN_OR_RETURN(layer.down_proj, checkpoint.ReadFloat32(mlp + "down_proj.weight", {hidden, inter}));
  }

  int64_t n = static_cast<int64_t>(weights->embed_tokens_.size() + weights->lm_head_.size() +
                                    weights->final_norm_.size());
  for (const CpuLayerWeights& l : weights->layers_) {
    for (const auto* t : {&l.input_norm, &l.qkv_proj, &l.qkv_bias, &l.q_norm, &l.k_norm, &l.o_proj,
                          &l.o_bias, &l.post_attention_norm, &l.gate_up_proj, &l.down_proj}) {
      n += static_cast<int64_t>(t->size());
    }
  }
  weights->num_parameters_ = n;
  return weights;
}

}  // namespace asyncspade
