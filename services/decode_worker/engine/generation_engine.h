// Continuous batching over one ModelRunner: requests wait in FIFO order until the KV cache has
// room for their prompt, then every Step() runs one forward over all running sequences (decode
// tokens and prefill chunks mixed), samples, applies stop criteria and frees finished sequences.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"
#include "services/decode_worker/engine/generation_request.h"
#include "services/decode_worker/engine/stop_string_matcher.h"
#include "services/decode_worker/kv_cache/kv_cache_manager.h"
#include "services/decode_worker/model/model_runner.h"
#include "services/decode_worker/sampling/sampler.h"

namespace asyncspade {

struct GenerationEngineOptions {
  int max_batch_size = 8;      // running sequences
  int max_batch_tokens = 512;  // tokens per forward; longer prompts are prefilled in chunks
  // Decode headroom reserved at admission beyond the prompt, so a just-admitted sequence does not
  // immediately preempt others.
  int decode_reserve_tokens = 16;
  int max_sequence_length = 0;  // prompt + max_tokens limit; 0: the model's max_position_embeddings
  // The sparse-attention settings of requests that bring none (GenerationRequest::sparse). The
  // runner's attention stage applies them; a dense stage ignores them.
  SparsePolicyConfig sparse_default;
  // Let a runner that can (ModelRunner::samples_tokens(), e.g. the CUDA runner) draw the tokens
  // where the logits are, instead of copying every next-token logits row to the host and sampling
  // here. Both follow kernels::cpu::Sample's recipe; false keeps the host path for every runner.
  bool sample_on_runner = true;
};

class GenerationEngine {
 public:
  // The KV block count and page size are the runner's (it owns the storage). `tokenizer`, if not
  // null, must outlive the engine; it enables event text and stop strings.
  static absl::StatusOr<std::unique_ptr<GenerationEngine>> Create(std::unique_ptr<ModelRunner> runner,
                                                                  const GenerationEngineOptions& options,
                                                                  const Tokenizer* tokenizer = nullptr);

  // Queues a request. An invalid request (empty prompt, id outside the vocabulary, too long,
  // bad sampling parameters, stop strings without a tokenizer, a duplicate id, a sequence that can
  // never fit in the KV cache, invalid sparse-attention settings) fails here, alone.
  absl::Status Submit(int64_t request_id, GenerationRequest request);
  // One continuous-batching iteration. An error is a runner failure (not a request's fault).
  absl::StatusOr<std::vector<GenerationEvent>> Step();
  // Drops a waiting or running request and frees its blocks; its abort event comes with the next
  // Step(). NOT_FOUND if the id is unknown or already finished.
  absl::Status Abort(int64_t request_id);

  bool HasWork() const { return !waiting_.empty() || !running_.empty() || !pending_events_.empty(); }
  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int kv_blocks_used() const { return kv_cache_.num_used_blocks(); }
  int kv_blocks_total() const { return kv_cache_.num_blocks(); }
  double kv_usage() const { return kv_cache_.usage_fraction(); }
  int64_t num_preemptions() const { return num_preemptions_; }
  int last_step_num_tokens() const { return last_step_num_tokens_; }
  int max_sequence_length() const { return max_sequence_length_; }
  // Forwards run so far; each forward's number is passed to the attention stage (ForwardBatch::step).
  uint64_t steps() const { return step_counter_; }
  const SparsePolicyConfig& sparse_default() const { return options_.sparse_default; }
  // The attention policy's counters summed over every sequence so far (heartbeats).
  SparseAttentionCounters sparse_totals() const { return runner_->TotalSparseCounters(); }

  ModelRunner& runner() { return *runner_; }
  const KvCacheManager& kv_cache() const { return kv_cache_; }

 private:
  struct Sequence {
    int64_t id = 0;
    GenerationRequest request;
    std::vector<int32_t> tokens;  // prompt, then generated
    int prompt_len = 0;
    int num_computed = 0;  // tokens whose keys/values are in the cache
    int num_generated = 0;
    bool prompt_logits_sent = false;
    std::vector<float> prompt_logits;
    std::unique_ptr<IncrementalDetokenizer> detokenizer;
    std::unique_ptr<StopStringMatcher> stop_matcher;
    SparsePolicyConfig sparse;  // the request's, resolved at Submit
    // Counters of the runs of this sequence that were released (preemption recomputes it).
    SparseAttentionCounters released_sparse_stats;
  };
  struct Scheduled {
    Sequence* seq;
    int num_tokens;
    LogitsWanted logits;
    bool reaches_end;  // the chunk ends at the last known token: the sequence gets its next token
  };

  GenerationEngine(std::unique_ptr<ModelRunner> runner, const GenerationEngineOptions& options,
                   const Tokenizer* tokenizer);
  void Admit();
  std::vector<Scheduled> Schedule();
  // Frees the KV blocks of the most recently admitted running sequence and puts it back at the
  // head of the queue; it is recomputed from its tokens when readmitted.
  void PreemptLast();
  // Frees the sequence's KV blocks and tells the runner (and through it the attention policy),
  // keeping what the policy counted for it.
  void ReleaseSequence(Sequence* seq);
  // Applies a sampled token (or end of scoring) and fills `event`; true when the sequence finished.
  bool ApplyToken(Sequence* seq, int32_t token, GenerationEvent* event);
  // Passes new text through the stop-string matcher into the event.
  void StreamText(Sequence* seq, const std::string& piece, bool final, GenerationEvent* event, bool* stopped);

  std::unique_ptr<ModelRunner> runner_;
  GenerationEngineOptions options_;
  const Tokenizer* tokenizer_;
  KvCacheManager kv_cache_;
  Sampler sampler_;
  int max_sequence_length_ = 0;
  absl::flat_hash_set<int32_t> model_eos_ids_;

  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  absl::flat_hash_set<int64_t> active_ids_;
  std::vector<GenerationEvent> pending_events_;
  ForwardOutput output_;  // reused across steps
  int64_t num_preemptions_ = 0;
  int last_step_num_tokens_ = 0;
  uint64_t step_counter_ = 0;
};

}  // namespace asyncspade
