// Creates the model runner a decode worker serves with, from its deployment and its devices: the
// fp32 CpuModelRunner for `cpu`, the CudaModelRunner (bf16, tensor parallel over the listed GPUs)
// for GPU ordinals. The CUDA runner exists only in builds with CUDA; this file compiles without it
// (the GPU branch then reports that the build has no CUDA).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/config/deployment_config.h"
#include "services/decode_worker/model/attention_stage.h"
#include "services/decode_worker/model/model_runner.h"

namespace asyncspade {

struct ModelRunnerFactoryOptions {
  // The deployment's resolved max_seq_len (ResolveDeploymentForModel); 0: the model's
  // max_position_embeddings capped at kDefaultMaxSeqLenCap.
  int max_seq_len = 0;
  // CPU: the attention stage (the decode worker's SparseAttentionStage with its selector pool);
  // null: dense. The CUDA runner runs dense/quest/oracle itself from the deployment's `sparse`.
  std::unique_ptr<AttentionStage> cpu_attention;
  // GPU: replay CUDA graphs for decode-only steps.
  bool cuda_graphs = true;
  // GPU with model.random_weights: the seed of the weights.
  uint64_t random_weights_seed = 0;
};

// True when this binary was built with the CUDA runner.
bool ModelRunnerFactoryHasCuda();

// `devices` as the decode worker's --devices flag gives them: {"cpu"} or GPU ordinals
// {"0", "1"}. Returns the GPU ordinals, empty for the CPU; InvalidArgument for anything else
// (mixing cpu and GPUs, non-numbers, duplicates).
absl::StatusOr<std::vector<int>> ParseRunnerDevices(const std::vector<std::string>& devices);

// The runner for `deployment` on `devices`:
//  - cpu: CpuModelRunner over model.path (model.random_weights is refused: the CPU loads
//    checkpoints), kv_cache.blocks blocks of kv_cache.page_size.
//  - GPUs: CudaModelRunner over model.path or the random_weights preset, tensor parallel over the
//    GPUs (their count must equal decode_workers.tensor_parallel_size), the KV cache sized by
//    kv_cache.blocks or kv_cache.memory_fraction, batch limits from decode_workers (max_batch_size,
//    max_prefill_tokens), sparse defaults from `sparse`. model.dtype must be auto or bfloat16.
// Errors name the deployment key to change.
absl::StatusOr<std::unique_ptr<ModelRunner>> CreateModelRunner(const DeploymentConfig& deployment,
                                                               const std::vector<std::string>& devices,
                                                               ModelRunnerFactoryOptions options = {});

// Keys of positions [start, start + num_tokens) of `layer` from a runner's cache (CPU or CUDA),
// fp32 [num_tokens, num_kv_heads, head_dim]: what a KV selector's bulk copy reads.
absl::Status ReadCachedKeys(ModelRunner& runner, absl::Span<const int32_t> block_table, int layer, int32_t start,
                            int32_t num_tokens, float* out);

}  // namespace asyncspade
