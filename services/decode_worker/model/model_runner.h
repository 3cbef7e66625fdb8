// The model forward as the engine sees it: one ragged batch of sequences in (prefill chunks and
// decode tokens mixed), logits out. Implementations: CpuModelRunner (the fp32 reference) and, with
// CUDA, a GPU runner with the same KV-cache bookkeeping.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/config/sparse_policy_config.h"
#include "common/model_config.h"
#include "kernels/kernel_types.h"
#include "kernels/sampling.h"
#include "services/decode_worker/model/attention_stage.h"

namespace asyncspade {

// Which logits rows a sequence wants back from a forward.
enum class LogitsWanted {
  kNone,  // a prefill chunk that does not reach the end of what is known
  kLast,  // the next-token distribution (decode, last prefill chunk)
  kAll,   // every new position (teacher-forced scoring, prompt logits)
};

struct ForwardSequence {
  int64_t sequence_id = 0;             // stable per sequence: policies may keep state by it
  absl::Span<const int32_t> tokens;    // the new tokens, at least one
  int start_position = 0;              // tokens of this sequence already in the KV cache
  absl::Span<const int32_t> block_table;  // must cover start_position + tokens.size() tokens
  LogitsWanted logits = LogitsWanted::kLast;
  // The sequence's sparse-attention settings (the request's, resolved by the engine); null: the
  // attention stage's default. Must stay valid during Forward.
  const SparsePolicyConfig* sparse = nullptr;
  // Non-null: the engine wants a token drawn from the logits of this chunk's last position, with
  // these parameters and the counter `rng_step` (kernels::cpu::Sample's recipe). A runner whose
  // samples_tokens() is true puts it in ForwardOutput::sampled_tokens whatever `logits` says
  // (kNone: the row is computed for the draw but not returned); other runners ignore it. Must
  // stay valid during Forward.
  const kernels::SamplingParams* sampling = nullptr;
  uint64_t rng_step = 0;
};

struct ForwardBatch {
  std::vector<ForwardSequence> sequences;
  uint64_t step = 0;  // the engine's step counter, passed to the attention stage
};

struct ForwardOutput {
  int vocab_size = 0;
  // [num_rows, vocab_size], the rows of sequence b are row_offsets[b] .. row_offsets[b+1]
  // (none for kNone, one for kLast, tokens.size() for kAll).
  std::vector<float> logits;
  std::vector<int32_t> row_offsets;
  // Runners that sample (ModelRunner::samples_tokens()): [num_seqs], the token drawn for each
  // sequence that asked (ForwardSequence::sampling), −1 for the others. Empty otherwise.
  std::vector<int32_t> sampled_tokens;

  int num_rows(int seq) const { return row_offsets[seq + 1] - row_offsets[seq]; }
  const float* row(int seq, int i) const {
    return logits.data() + (int64_t{row_offsets[seq]} + i) * vocab_size;
  }
  // The last row of a sequence that asked for kLast or kAll.
  const float* last_row(int seq) const { return row(seq, num_rows(seq) - 1); }
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;
  virtual const ModelConfig& config() const = 0;
  // The geometry of the KV storage the runner owns (num_blocks, page_size): the engine's
  // KvCacheManager hands out block ids in [0, num_blocks).
  virtual const kernels::PagedKvLayout& kv_layout() const = 0;
  // Appends the new tokens' keys/values to the cache and computes the requested logits. An
  // invalid batch (token out of vocabulary, block table too short, ...) is INVALID_ARGUMENT and
  // leaves the cache of the batch's sequences unspecified.
  virtual absl::Status Forward(const ForwardBatch& batch, ForwardOutput* output) = 0;
  // Whether Forward draws the tokens that ForwardSequence::sampling asks for (on the device, where
  // the logits are), so that the engine need not fetch those logits rows. False: the engine
  // samples the returned rows on the host.
  virtual bool samples_tokens() const { return false; }
  // Prepares everything a first request would otherwise pay for (e.g. capturing the CUDA graphs
  // of every decode shape). Call once, before serving: the runner may use (and then clears) its
  // KV storage. Nothing to do by default.
  virtual absl::Status Warmup() { return absl::OkStatus(); }
  // The engine freed the sequence's KV blocks (finished, aborted or preempted): per-sequence state
  // kept by the runner or its attention policy can go. A preempted sequence comes back later under
  // the same id with start_position 0.
  virtual void ReleaseSequence(int64_t sequence_id) {}
  // What the attention policy counted for a sequence it still holds (read it before
  // ReleaseSequence), and for every sequence so far.
  virtual SparseAttentionCounters SequenceSparseCounters(int64_t sequence_id) const { return {}; }
  virtual SparseAttentionCounters TotalSparseCounters() const { return {}; }
};

}  // namespace asyncspade
