// The host half of a CUDA forward: turns a ForwardBatch into the flat arrays the kernels read
// (token ids, positions, cache slots, q_indptr, kv lengths, block tables, logits rows) and into the
// shape decisions that must be fixed before launching (padding buckets, the KV-length class, the
// sparse-attention groups). Pure C++ with no CUDA dependency: the runner copies the arrays into
// pinned staging and uploads them, the planning itself never touches the device.
//
// Decode-only steps (every sequence has one new token) are padded to a batch bucket (1, 2, 4, 8,
// ...) and their KV lengths to a class (256·2^k up to 8192, then multiples of 8192), so that every
// host-side launch parameter is a function of (bucket, class, sparse groups): that triple is the
// key of the step's CUDA graph. Padded sequences have kv_len 0 and padded tokens slot −1, which
// every kernel treats as "nothing to do".
//
// Sparse attention: decode sequences whose policy is quest or oracle form one group per distinct
// (policy, budget, sinks, recent, aggregation); a group runs over the whole (padded) batch with kv_len 0 for
// non-members, so membership is data, not shape. Members are the group's sequences whose context
// exceeds SparseFromContext() (or every one, without the threshold); the others attend densely.
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "common/config/sparse_policy_config.h"
#include "kernels/sampling.h"
#include "services/decode_worker/model/attention_stage.h"
#include "services/decode_worker/model/model_runner.h"

namespace asyncspade::cuda_engine {

// 1, 2, 4, ...: the padded batch of a decode step.
int BatchBucket(int num_seqs);
// Padded token count of a mixed (prefill) step: powers of two up to 64, then multiples of 64, so a
// bounded set of GEMM shapes is planned up front.
int TokenBucket(int num_tokens);
// The KV-length class of a step whose longest sequence holds `max_kv_len` keys: 256·2^k up to
// 8192, then multiples of 8192, never above `cap` (which must be ≥ max_kv_len).
int KvClass(int max_kv_len, int cap);

// Fixed sizes the runner allocated for.
struct StepLimits {
  int max_tokens = 0;  // token capacity of one forward (TokenBucket of the engine's token budget)
  int max_seqs = 0;    // sequence capacity (BatchBucket of the engine's batch size)
  int max_kv_len = 0;  // keys per sequence (max_seq_len rounded up to the page size)
  int page_size = 16;
  int num_kv_blocks = 0;
  int vocab_size = 0;
  int num_layers = 0;
  int logits_chunk_rows = 0;  // rows of one LM-head pass (≥ max_seqs)
  // The runner draws the tokens ForwardSequence::sampling asks for (else the field is ignored).
  bool sample_tokens = false;
};

// How the runner attends.
struct StepAttentionOptions {
  // false: every sequence attends densely and per-sequence settings are ignored (like the CPU's
  // DenseAttentionStage).
  bool per_sequence_policies = true;
  SparsePolicyConfig default_config;  // for sequences that bring none
  // false: the sparse path even when the budget covers the whole context (tests check that it
  // then equals dense attention).
  bool dense_below_threshold = true;
  bool quest_supported = true;   // the model's shapes fit the Quest kernels and metadata exists
  bool oracle_supported = true;  // the model's shapes fit the key-scoring kernels
};

struct SparseGroupKey {
  SparsePolicy policy = SparsePolicy::kOracle;
  int budget = 0;
  int sinks = 0;
  int recent = 0;
  // How a KV head's query scores combine (quest: kSum or kMax; its kSoftmaxSum is kept as kSum).
  ScoreAggregation aggregation = ScoreAggregation::kSum;
  auto tie() const { return std::tie(policy, budget, sinks, recent, aggregation); }
  bool operator<(const SparseGroupKey& o) const { return tie() < o.tie(); }
  bool operator==(const SparseGroupKey& o) const { return tie() == o.tie(); }
};

struct SparseGroupPlan {
  SparseGroupKey key;
  // Launch parameters for the step's KV class (the configured values, clamped so that the index
  // lists fit the class without changing which positions are attended).
  int sinks = 0;
  int recent = 0;
  int num_selected = 0;  // oracle: top-k per KV head; quest: pages × page_size
  int quest_pages = 0;   // quest: pages chosen per KV head
  int max_indices = 0;   // row length of the index lists
  int num_members = 0;
  std::vector<int32_t> kv_lens;       // [seqs_padded]: a member's kv_len, 0 for everyone else
  std::vector<int32_t> scatter_rows;  // [seqs_padded]: a member's token row, −1 for everyone else
};

// What a step does to one sequence's sparse-attention counters (× num_layers).
enum class SequenceAttention : uint8_t { kDense, kSparse, kDenseFallback };

struct StepPlan {
  bool decode_only = false;
  int num_seqs = 0;
  int seqs_padded = 0;
  int num_tokens = 0;
  int tokens_padded = 0;
  int max_q_len = 0;
  int max_kv_len = 0;
  int kv_class = 0;           // the class length (≥ max_kv_len)
  int block_stride = 0;       // entries per block-table row = ceil(kv_class / page_size)
  bool quest_update = false;  // fold this step's keys into the Quest metadata
  bool pure_sparse = false;   // decode step whose every sequence is a member of the one group

  std::vector<int32_t> token_ids;      // [tokens_padded]
  std::vector<int32_t> positions;      // [tokens_padded]
  std::vector<int64_t> slots;          // [tokens_padded], −1 for padding
  std::vector<int32_t> q_indptr;       // [seqs_padded + 1]
  std::vector<int32_t> kv_lens;        // [seqs_padded]
  std::vector<int32_t> kv_lens_dense;  // [seqs_padded]: kv_lens with 0 for sparse members
  std::vector<int32_t> block_tables;   // [seqs_padded, block_stride]
  std::vector<int32_t> last_rows;      // [seqs_padded]: each sequence's last token row (−1 padding)
  // The token rows whose logits are computed: those returned (in output order) and, for
  // sequences that are sampled without returning logits, their last row, in sequence order;
  // padded with −1 to a multiple of logits_chunk_rows. Mixed steps compute exactly these; decode
  // steps compute every row anyway.
  std::vector<int32_t> logit_rows;
  int num_logit_rows = 0;
  // Mixed steps: [num_logit_rows], the output row of each computed row, −1 for a row computed only
  // to be sampled.
  std::vector<int32_t> logit_row_output;
  int num_output_rows = 0;           // rows returned in ForwardOutput
  std::vector<int32_t> row_offsets;  // ForwardOutput::row_offsets, [num_seqs + 1]
  // Decode steps: the device logits row of each output row.
  std::vector<int32_t> decode_logit_source;

  // Sampling on the device (StepLimits::sample_tokens). Parameters and counters per sampled row:
  // decode steps [num_seqs] (row b = sequence b), mixed steps [num_logit_rows] (the computed
  // rows); rows nobody samples are greedy and their tokens ignored.
  int num_sampled = 0;
  std::vector<int32_t> sample_row;  // [num_seqs]: the sequence's row in those arrays, −1 for none
  std::vector<kernels::SamplingParams> sample_params;
  std::vector<uint64_t> sample_steps;

  std::vector<SparseGroupPlan> groups;  // the first num_groups are this step's
  int num_groups = 0;
  std::vector<SequenceAttention> attention;  // [num_seqs]
};

class StepPlanner {
 public:
  StepPlanner(const StepLimits& limits, const StepAttentionOptions& options);

  // Validates `batch` (INVALID_ARGUMENT naming the sequence for a bad token id, a short block
  // table, a block id outside the cache, a context beyond max_kv_len, a batch beyond capacity;
  // FAILED_PRECONDITION for a quest page size that differs from the cache's) and fills `plan`.
  // Vectors only grow up to the capacities reserved at construction: no allocation in steady state.
  absl::Status Build(const ForwardBatch& batch, StepPlan* plan) const;
  // Reserves every vector of `plan` at its capacity, once.
  void Reserve(StepPlan* plan) const;

  const StepLimits& limits() const { return limits_; }
  const StepAttentionOptions& options() const { return options_; }

 private:
  const StepLimits limits_;
  const StepAttentionOptions options_;
};

// The launch parameters of a group for KV class `kv_class` (see SparseGroupPlan).
void ResolveGroupLaunch(const SparseGroupKey& key, int kv_class, int page_size, SparseGroupPlan* group);

}  // namespace asyncspade::cuda_engine
