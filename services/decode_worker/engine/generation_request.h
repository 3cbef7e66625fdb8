// What a client asks the generation engine for, and what the engine reports back each step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/sampling.h"

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
};

}  // namespace asyncspade
