// The GPU forward of Llama / Qwen2 / Qwen3 behind the ModelRunner interface, so the
// GenerationEngine drives it exactly as it drives CpuModelRunner: bf16 weights and paged KV cache
// on one or more GPUs (tensor parallel, one process, one thread per GPU, NCCL all-reduce),
// prefill chunks and decode tokens mixed in one batch, fp32 logits rows back on the host.
//
// Attention per sequence (ForwardSequence::sparse, or the runner's default): dense, quest and
// oracle run on the GPU (docs/gpu_engine.md); asyncspade needs a KV selector, which this runner
// does not drive, so its sequences attend densely and are counted as dense fallbacks. Decode-only
// steps replay CUDA graphs captured per (batch bucket, KV-length class, sparse groups); steps with
// prefill chunks run eagerly. Every buffer is allocated at creation: a step allocates nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/config/sparse_policy_config.h"
#include "common/model_config.h"
#include "services/decode_worker/model/model_runner.h"

namespace asyncspade {

struct CudaModelRunnerOptions {
  // CUDA device ordinals, one per tensor-parallel rank (rank r runs on devices[r]).
  std::vector<int> devices = {0};
  // KV cache: a fixed block count, or (when 0) `kv_memory_fraction` of the memory left free on the
  // fullest rank after weights, workspaces and NCCL are set up.
  int64_t num_kv_blocks = 0;
  double kv_memory_fraction = 0.0;
  int page_size = 16;
  // Longest sequence (prompt + generated); 0: the model's max_position_embeddings.
  int max_seq_len = 0;
  int max_batch_size = 32;      // sequences per forward
  int max_batch_tokens = 4096;  // new tokens per forward (prefill chunks + decode tokens)
  bool cuda_graphs = true;      // replay captured graphs for decode-only steps
  // false: dense attention for every sequence, per-sequence settings ignored.
  bool per_sequence_policies = true;
  SparsePolicyConfig default_sparse;  // sequences without settings (ForwardSequence::sparse null)
  // false: quest/oracle take the sparse path even when sinks + budget + recent cover the context.
  // (How a KV head's G query scores combine is each sequence's `aggregation`.)
  bool dense_below_threshold = true;
  // Allocate the per-page min/max key bounds quest needs (1/8 of the K cache at page size 16).
  bool quest_metadata = true;
  // Room for Warmup()'s graphs: (batch buckets) × (KV classes) × (dense, the default sparse
  // policy's two shapes), e.g. 7 × 9 × 3 = 189 for 64 sequences of up to 32K tokens.
  int max_cached_graphs = 256;
  // Draw the tokens ForwardSequence::sampling asks for on the device (kernels::cuda::Sample), so
  // the engine copies no logits rows for them. false: the engine samples on the host.
  bool device_sampling = true;
  // Fewer, fused launches on the decode path: the q|k|v split, q/k norm, RoPE and KV append (and
  // on decode steps the Quest page bounds) in one kernel; Quest page expansion and index lists in
  // one kernel. false: the separate kernels of kernels/ (the first implementation).
  bool fuse_decode_kernels = true;
};

// Per-stage device time of the last step run in stage-profiling mode (eager, events around the
// stages of every layer), in milliseconds.
struct CudaStageTimes {
  double estimate_ms = 0;   // Quest metadata update + page scores, or oracle key scores
  double topk_ms = 0;       // top-k, page expansion, index lists
  double attention_ms = 0;  // dense and sparse attention, scatter of sparse rows
  double gemm_ms = 0;       // the four projections of every layer (not the LM head)
  double norm_ms = 0;       // (fused add +) RMSNorm before attention and before the MLP
  double prep_ms = 0;       // q|k|v split, q/k norm + RoPE, KV append (+ Quest bounds when fused)
  double activation_ms = 0; // SiluAndMul
  double allreduce_ms = 0;  // tensor-parallel all-reduces
  double head_ms = 0;       // embedding, final norm, LM head
  double sampling_ms = 0;   // on-device sampling
  double total_ms = 0;      // the whole device step
};

// What Warmup() did.
struct CudaWarmupReport {
  int steps = 0;            // forwards run
  int graphs_captured = 0;  // new graphs (all ranks)
  double seconds = 0.0;
};

// One sequence of the synthetic KV fill: its block table and how many positions to fill.
struct SyntheticKvSequence {
  absl::Span<const int32_t> block_table;
  int num_tokens = 0;
};

class CudaModelRunner : public ModelRunner {
 public:
  // The Hugging Face checkpoint in `model_dir` (config.json + safetensors), converted to bf16.
  static absl::StatusOr<std::unique_ptr<CudaModelRunner>> CreateFromCheckpoint(const std::string& model_dir,
                                                                               const CudaModelRunnerOptions& options);
  // Random weights of `config`'s shapes (RandomWeightPresetModelConfig, or any config), drawn on
  // the device from `seed`; identical for every tensor-parallel size.
  static absl::StatusOr<std::unique_ptr<CudaModelRunner>> CreateWithRandomWeights(
      const ModelConfig& config, uint64_t seed, const CudaModelRunnerOptions& options);
  ~CudaModelRunner() override;

  const ModelConfig& config() const override { return config_; }
  const kernels::PagedKvLayout& kv_layout() const override { return kv_layout_; }
  absl::Status Forward(const ForwardBatch& batch, ForwardOutput* output) override;
  void ReleaseSequence(int64_t sequence_id) override;
  SparseAttentionCounters SequenceSparseCounters(int64_t sequence_id) const override;
  SparseAttentionCounters TotalSparseCounters() const override { return totals_; }
  bool samples_tokens() const override { return options_.device_sampling; }
  // Captures the decode graph of every batch bucket (1, 2, 4, … up to max_batch_size) and KV-length
  // class (up to max_seq_len) for dense attention and, when the default policy is quest or oracle,
  // for its group with and without non-members; runs one prefill step so that the eager kernels
  // are loaded too. Its steps write into KV block 0, so the whole cache (and the Quest bounds) is
  // zeroed afterwards and the policy counters reset: call it before the first sequence. Without
  // CUDA graphs it only runs those steps once (module loading, cuBLASLt).
  absl::Status Warmup() override;
  const CudaWarmupReport& last_warmup() const { return warmup_; }

  // Fills the KV cache of each sequence's first num_tokens positions (every layer, every rank)
  // with random bf16 keys and values (uniform ±[0.05, 1], never zero) and their Quest bounds, so
  // that decode steps can run at a long context without a prefill. Not for the step path.
  absl::Status FillSyntheticKv(absl::Span<const SyntheticKvSequence> sequences, uint64_t seed);

  // Keys of positions [start, start + num_tokens) of one layer of a sequence with `block_table`,
  // all KV heads, as fp32 [num_tokens, num_kv_heads, head_dim] (for a KV selector's bulk copy).
  absl::Status ReadKeys(absl::Span<const int32_t> block_table, int layer, int32_t start, int32_t num_tokens,
                        float* out) const;

  void set_cuda_graphs(bool enabled) { options_.cuda_graphs = enabled; }
  // Switches the fused decode kernels (CudaModelRunnerOptions::fuse_decode_kernels); drops the
  // captured graphs, which hold the other kernels.
  absl::Status set_fuse_decode_kernels(bool enabled);
  bool fuse_decode_kernels() const { return options_.fuse_decode_kernels; }
  // Drops every captured decode graph (the next steps capture again), e.g. after a process-wide
  // launch mode changed (kernels::cuda::SetProgrammaticLaunch).
  absl::Status ClearGraphs();
  bool cuda_graphs() const { return options_.cuda_graphs; }
  // Stage profiling runs every step eagerly with events around the stages (slower; for the
  // benchmark's breakdown). last_stage_times() is valid after a profiled step.
  void set_stage_profiling(bool enabled) { stage_profiling_ = enabled; }
  const CudaStageTimes& last_stage_times() const { return stage_times_; }
  // Device time of the last Forward from the first upload to the last logits row (rank 0, events).
  double last_step_device_ms() const { return last_step_device_ms_; }
  // Whether the last Forward replayed a graph.
  bool last_step_used_graph() const { return last_step_used_graph_; }

  int tensor_parallel_size() const { return static_cast<int>(ranks_.size()); }
  int num_cached_graphs() const;
  // Bytes of weights a decode step reads, summed over ranks, and of one rank (rank 0 holds the LM
  // head).
  size_t step_weight_bytes() const;
  size_t rank_step_weight_bytes(int rank) const;
  // KV cache bytes (K and V of every layer and rank), and Quest metadata bytes.
  size_t kv_cache_bytes() const;
  size_t quest_metadata_bytes() const;
  // Bytes of K plus V of one token in one layer, all ranks together.
  size_t kv_bytes_per_token_per_layer() const;
  int max_seq_len() const;
  bool fast_decode_attention() const;  // the tuned decode/prefill kernels (head_dim 64/128)

 private:
  struct Rank;         // one GPU's state
  struct Impl;         // host-side step state shared by the ranks
  struct WeightsFrom;  // checkpoint or random seed
  CudaModelRunner();
  static absl::StatusOr<std::unique_ptr<CudaModelRunner>> Create(const ModelConfig& config, const WeightsFrom& weights,
                                                                 const CudaModelRunnerOptions& options);
  absl::Status Init(const WeightsFrom& weights);
  absl::Status InitRank(Rank& rank, const WeightsFrom& weights);
  absl::Status SizeAndAllocateKvCache();
  absl::Status RunRankStep(int rank);
  absl::Status EnqueueLayers(Rank& rank);
  absl::Status EnqueueAttention(Rank& rank, int layer);
  absl::Status EnqueueSparseGroup(Rank& rank, int layer, int group, const __nv_bfloat16* q_sub);
  absl::Status EnqueueChunkedLogits(Rank& rank);
  // Draws `rows` tokens from `logits` (rows of vocab_padded floats) with the staged sampling
  // arrays from row `first` on, into the rank's token buffer from `first` on.
  absl::Status EnqueueSampling(Rank& rank, const float* logits, int first, int rows);
  absl::Status AllReduceHidden(Rank& rank);

  std::unique_ptr<Impl> impl_;
  ModelConfig config_;
  CudaModelRunnerOptions options_;
  kernels::PagedKvLayout kv_layout_;  // num_kv_heads: the model's (all ranks)
  std::vector<std::unique_ptr<Rank>> ranks_;
  bool stage_profiling_ = false;
  CudaStageTimes stage_times_;
  CudaWarmupReport warmup_;
  double last_step_device_ms_ = 0.0;
  bool last_step_used_graph_ = false;
  bool broken_ = false;
  absl::Status broken_status_;
  absl::flat_hash_map<int64_t, SparseAttentionCounters> counters_;
  SparseAttentionCounters totals_;
};

}  // namespace asyncspade
