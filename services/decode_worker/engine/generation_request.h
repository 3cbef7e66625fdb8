// What a client asks the generation engine for, and what the engine reports back each step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/config/sparse_policy_config.h"
#include "kernels/sampling.h"
#include "services/decode_worker/model/attention_stage.h"

namespace asyncspade {

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;
  int max_tokens = 16;  // new tokens; 0 only scores the prompt
  kernels::SamplingParams sampling;  // default: greedy
  std::vector<int32_t> eos_token_ids;   // stop ids in addition to the model's EOS ids
  std::vector<int32_t> stop_token_ids;  // further stop ids (e.g. llama2.c's BOS)
  std::vector<std::string> stop_strings;  // matched on the detokenized output (needs a tokenizer)
  bool ignore_eos = false;                // do not stop on the model's or the request's EOS ids
  bool return_prompt_logits = false;      // teacher-forced logits of every prompt position
  // Sparse attention for this request: `sparse` replaces the engine's default
  // (GenerationEngineOptions::sparse_default) when set, then `sparse_override` (a client's policy
  // and/or budget) is applied on top. The result is validated at Submit.
  std::optional<SparsePolicyConfig> sparse;
  SparsePolicyOverride sparse_override;
};

enum class FinishReason {
  kNone,        // still running
  kLength,      // max_tokens reached
  kStop,        // an EOS id or a stop token id was generated
  kStopString,  // a stop string appeared in the text
  kAbort,       // aborted by the client
};

std::string_view FinishReasonName(FinishReason reason);

struct GenerationEvent {
  int64_t request_id = 0;
  std::optional<int32_t> token_id;  // the token generated this step (none for abort/scoring)
  std::string text;                 // newly visible text (with a tokenizer; stop text held back)
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::vector<float> prompt_logits;  // [prompt_len, vocab], once, when return_prompt_logits
  // On the finished event: what the attention policy counted for this request (zeros for dense).
  SparseAttentionCounters sparse_stats;
};

}  // namespace asyncspade
