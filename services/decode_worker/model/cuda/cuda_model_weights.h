// One tensor-parallel rank's bf16 weights on its GPU: loaded from a Hugging Face checkpoint
// (F32/BF16/F16 converted to bf16 on the host) or drawn at random on the device for a shape
// (the random-weights presets of GPU benchmarks). Laid out for the CUDA runner like the CPU
// runner's: q|k|v and gate|up fused into one matrix each.
//
// Tensor parallelism (Megatron style): rank r of T holds query heads [r·Hq/T, (r+1)·Hq/T) and KV
// heads [r·Hkv/T, ...) of q|k|v (column split), the matching input columns of o_proj (row split),
// rows [r·I/T, ...) of gate and up and the matching columns of down_proj; the outputs of o_proj
// and down_proj are partial sums that the runner all-reduces. Norms and the embedding table are
// replicated; the LM head lives on rank 0 only (it alone computes logits). An o_proj bias is held
// by rank 0 only, so it is added once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "kernels/kernel_types.h"
#include "services/decode_worker/model/cuda/device_memory.h"

namespace asyncspade {
namespace cuda_engine {
class WeightWriter;  // where weight values come from (checkpoint or random), cuda_model_weights.cc
}  // namespace cuda_engine

// The geometry of one rank's shard. Intermediate and vocabulary sizes are padded to multiples of 8
// with zero weights (exact: silu(0)·0 = 0, and padded logits are never read) so that every GEMM
// operand row is 16-byte aligned.
struct CudaRankShape {
  int tp_size = 1;
  int rank = 0;
  int hidden = 0;
  int head_dim = 0;
  int num_q_heads = 0;          // local
  int num_kv_heads = 0;         // local
  int q_size = 0;               // num_q_heads * head_dim
  int kv_size = 0;              // num_kv_heads * head_dim
  int qkv_size = 0;             // q_size + 2 * kv_size
  int intermediate = 0;         // local, unpadded
  int intermediate_padded = 0;  // local, a multiple of 8
  int vocab = 0;
  int vocab_padded = 0;  // a multiple of 8

  // InvalidArgument naming the config key when the model cannot run on the CUDA runner with
  // `tp_size` ranks (head_dim / hidden not multiples of 8, head_dim > 256, heads or intermediate
  // size not divisible by tp_size, ...).
  static absl::StatusOr<CudaRankShape> For(const ModelConfig& config, int tp_size, int rank);
};

struct CudaLayerWeights {
  const __nv_bfloat16* input_norm = nullptr;           // [hidden]
  const __nv_bfloat16* post_attention_norm = nullptr;  // [hidden]
  const __nv_bfloat16* qkv_proj = nullptr;             // [qkv_size, hidden]: local q rows | k rows | v rows
  const __nv_bfloat16* qkv_bias = nullptr;             // [qkv_size] or null
  const __nv_bfloat16* q_norm = nullptr;               // [head_dim], Qwen3
  const __nv_bfloat16* k_norm = nullptr;               // [head_dim], Qwen3
  const __nv_bfloat16* o_proj = nullptr;               // [hidden, q_size]
  const __nv_bfloat16* o_bias = nullptr;               // [hidden], rank 0 only, or null
  const __nv_bfloat16* gate_up_proj = nullptr;         // [2 * intermediate_padded, hidden]: gate | up
  const __nv_bfloat16* down_proj = nullptr;            // [hidden, intermediate_padded]
};

class CudaModelWeights {
 public:
  // Loads rank `rank`'s shard of `checkpoint` onto the current device. A missing tensor or a
  // wrong shape is an error naming the tensor (the checkpoint's own checks).
  static absl::StatusOr<std::unique_ptr<CudaModelWeights>> FromCheckpoint(const ModelConfig& config,
                                                                          const Checkpoint& checkpoint, int tp_size,
                                                                          int rank);
  // Random weights with the shapes of `config`, on the current device: projections uniform with
  // variance 1/fan_in, norm weights 1 ± 0.05, biases ±0.1, the embedding with variance 1/hidden
  // (so tied logits have unit variance). Element values are a hash of (seed, tensor name, logical
  // index): a shard of any tensor-parallel size holds the values of the unsharded model.
  static absl::StatusOr<std::unique_ptr<CudaModelWeights>> Random(const ModelConfig& config, uint64_t seed, int tp_size,
                                                                  int rank);

  const ModelConfig& config() const { return config_; }
  const CudaRankShape& shape() const { return shape_; }
  const __nv_bfloat16* embed_tokens() const { return embed_tokens_; }  // [vocab_padded, hidden]
  const __nv_bfloat16* lm_head() const { return lm_head_; }            // [vocab_padded, hidden]; null off rank 0
  const __nv_bfloat16* final_norm() const { return final_norm_; }      // [hidden]
  const CudaLayerWeights& layer(int i) const { return layers_[i]; }
  size_t device_bytes() const { return memory_.size(); }
  // What one decode step reads of this shard at least: every layer weight, the final norm and (on
  // rank 0) the LM head; of the embedding table only a few rows.
  size_t step_read_bytes() const { return step_read_bytes_; }

 private:
  CudaModelWeights() = default;
  static absl::StatusOr<std::unique_ptr<CudaModelWeights>> Build(const ModelConfig& config, int tp_size, int rank,
                                                                 cuda_engine::WeightWriter& writer);

  ModelConfig config_;
  CudaRankShape shape_;
  cuda_engine::DeviceMemory memory_;
  const __nv_bfloat16* embed_tokens_ = nullptr;
  const __nv_bfloat16* lm_head_ = nullptr;
  const __nv_bfloat16* final_norm_ = nullptr;
  std::vector<CudaLayerWeights> layers_;
  size_t step_read_bytes_ = 0;
};

}  // namespace asyncspade
