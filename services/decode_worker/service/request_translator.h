// Turns a public GenerateRequest (serving/v1) into what the generation engine runs: the prompt as
// token ids (text with the tokenizer's special tokens, a chat rendered with the model's template,
// or ids as given), sampling with proto3 `optional` meaning "unset = server default", stop
// criteria, and the request's sparse-attention settings applied on the deployment's default.
// Everything that concerns the request alone is checked here or by GenerationEngine::Submit, so a
// bad request is refused before its stream sends anything.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "asyncspade/serving/v1/generation.pb.h"
#include "common/config/sparse_policy_config.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "services/decode_worker/engine/generation_request.h"

namespace asyncspade {

// max_tokens when the request leaves it unset (capped to what the context leaves).
inline constexpr int kDefaultMaxTokens = 256;

// What the translation needs to know about the model and the deployment. Pointers are not owned
// and may be null (no tokenizer: only token ids are accepted; no chat template: no chat input).
struct RequestTranslationContext {
  const Tokenizer* tokenizer = nullptr;
  const ChatTemplate* chat_template = nullptr;
  int vocab_size = 0;
  int max_sequence_length = 0;  // prompt + max_tokens limit of the engine
  SparsePolicyConfig sparse_default;
};

struct TranslatedRequest {
  GenerationRequest engine_request;
  SparsePolicyConfig sparse;  // the deployment default with the request's override applied
  uint64_t seed = 0;          // the seed actually used (chosen here when the request has none)
};

// INVALID_ARGUMENT for anything wrong with the request itself (naming the field), FAILED_PRECONDITION
// when the request needs something the deployment lacks (a tokenizer for text, a chat template for
// chat). `random_seed` is used when the request sets no seed.
absl::StatusOr<TranslatedRequest> TranslateGenerateRequest(const serving::v1::GenerateRequest& request,
                                                          const RequestTranslationContext& context,
                                                          uint64_t random_seed);

// proto enum <-> the config's policy. UNSPECIFIED maps to nullopt (the deployment default).
absl::StatusOr<std::optional<SparsePolicy>> FromProtoSparsePolicy(serving::v1::SparsePolicy policy);
serving::v1::SparsePolicy ToProtoSparsePolicy(SparsePolicy policy);
serving::v1::FinishReason ToProtoFinishReason(FinishReason reason);

}  // namespace asyncspade
