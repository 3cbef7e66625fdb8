#include "services/decode_worker/service/request_translator.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "services/decode_worker/sampling/sampler.h"

namespace asyncspade {
namespace {

using serving::v1::GenerateRequest;

absl::StatusOr<std::vector<int32_t>> PromptIds(const GenerateRequest& request, const RequestTranslationContext& context) {
  switch (request.input_case()) {
    case GenerateRequest::kText: {
      if (request.text().empty()) {
        return absl::InvalidArgumentError("text is empty: send the prompt text (or chat / token_ids)");
      }
      if (context.tokenizer == nullptr) {
        return absl::FailedPreconditionError(
            "this deployment has no tokenizer (model.tokenizer), so it cannot take text: send token_ids instead");
      }
      return context.tokenizer->Encode(request.text(), /*add_special_tokens=*/true);
    }
    case GenerateRequest::kChat: {
      const serving::v1::ChatInput& chat = request.chat();
      if (chat.messages().empty()) {
        return absl::InvalidArgumentError("chat.messages is empty: send at least one message");
      }
      if (context.tokenizer == nullptr) {
        return absl::FailedPreconditionError(
            "this deployment has no tokenizer (model.tokenizer), so it cannot take chat input: send token_ids instead");
      }
      if (context.chat_template == nullptr) {
        return absl::FailedPreconditionError(
            "the model has no chat template (tokenizer_config.json chat_template): send text or token_ids instead "
            "of chat");
      }
      std::vector<ChatMessage> messages;
      for (int i = 0; i < chat.messages_size(); ++i) {
        const serving::v1::ChatMessage& m = chat.messages(i);
        if (m.role() != "system" && m.role() != "user" && m.role() != "assistant" && m.role() != "tool") {
          return absl::InvalidArgumentError(absl::StrCat("chat.messages[", i, "].role is '", m.role(),
                                                         "'; use \"system\", \"user\" or \"assistant\""));
        }
        messages.push_back(ChatMessage{m.role(), m.content()});
      }
      // Qwen3's template thinks unless told otherwise; other families ignore the switch.
      const bool enable_thinking = chat.has_enable_thinking() ? chat.enable_thinking() : true;
      const std::string rendered = context.chat_template->Render(messages, chat.add_generation_prompt(), enable_thinking);
      // The template writes the special tokens itself, as HF apply_chat_template does.
      return context.tokenizer->Encode(rendered, /*add_special_tokens=*/false);
    }
    case GenerateRequest::kTokenIds: {
      if (request.token_ids().ids().empty()) {
        return absl::InvalidArgumentError("token_ids.ids is empty: send at least one token id");
      }
      return std::vector<int32_t>(request.token_ids().ids().begin(), request.token_ids().ids().end());
    }
    case GenerateRequest::INPUT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("the request has no input: set one of text, chat or token_ids");
}

}  // namespace

absl::StatusOr<std::optional<SparsePolicy>> FromProtoSparsePolicy(serving::v1::SparsePolicy policy) {
  switch (policy) {
    case serving::v1::SPARSE_POLICY_UNSPECIFIED: return std::optional<SparsePolicy>();
    case serving::v1::SPARSE_POLICY_DENSE: return SparsePolicy::kDense;
    case serving::v1::SPARSE_POLICY_QUEST: return SparsePolicy::kQuest;
    case serving::v1::SPARSE_POLICY_ORACLE: return SparsePolicy::kOracle;
    case serving::v1::SPARSE_POLICY_ASYNCSPADE: return SparsePolicy::kAsyncSpade;
    default: break;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "sparse.policy: unknown value ", static_cast<int>(policy),
      "; use SPARSE_POLICY_DENSE, SPARSE_POLICY_QUEST, SPARSE_POLICY_ORACLE or SPARSE_POLICY_ASYNCSPADE, or leave "
      "it unset for the deployment default"));
}

serving::v1::SparsePolicy ToProtoSparsePolicy(SparsePolicy policy) {
  switch (policy) {
    case SparsePolicy::kDense: return serving::v1::SPARSE_POLICY_DENSE;
    case SparsePolicy::kQuest: return serving::v1::SPARSE_POLICY_QUEST;
    case SparsePolicy::kOracle: return serving::v1::SPARSE_POLICY_ORACLE;
    case SparsePolicy::kAsyncSpade: return serving::v1::SPARSE_POLICY_ASYNCSPADE;
  }
  return serving::v1::SPARSE_POLICY_UNSPECIFIED;
}

serving::v1::FinishReason ToProtoFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return serving::v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop: return serving::v1::FINISH_REASON_STOP;
    case FinishReason::kStopString: return serving::v1::FINISH_REASON_STOP_STRING;
    case FinishReason::kAbort: return serving::v1::FINISH_REASON_ABORTED;
    case FinishReason::kNone: break;
  }
  return serving::v1::FINISH_REASON_UNSPECIFIED;
}

absl::StatusOr<TranslatedRequest> TranslateGenerateRequest(const GenerateRequest& request,
                                                          const RequestTranslationContext& context,
                                                          uint64_t random_seed) {
  TranslatedRequest out;
  GenerationRequest& engine = out.engine_request;
  ASSIGN_OR_RETURN(engine.prompt_ids, PromptIds(request, context));
  if (engine.prompt_ids.empty()) {
    return absl::InvalidArgumentError("the prompt encodes to no tokens: send a non-empty prompt");
  }
  for (size_t i = 0; i < engine.prompt_ids.size(); ++i) {
    const int32_t id = engine.prompt_ids[i];
    if (id < 0 || id >= context.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token_ids.ids[", i, "] = ", id,
                                                     " is outside the model's vocabulary [0, ", context.vocab_size, ")"));
    }
  }
  const int prompt_len = static_cast<int>(engine.prompt_ids.size());
  if (context.max_sequence_length > 0 && prompt_len >= context.max_sequence_length) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", prompt_len,
                                                   " tokens; this deployment serves at most ",
                                                   context.max_sequence_length,
                                                   " tokens per sequence (prompt + max_tokens): shorten the prompt"));
  }

  // Sampling: unset fields take the documented defaults.
  const serving::v1::SamplingParams& sampling = request.sampling();
  engine.sampling.temperature = sampling.has_temperature() ? sampling.temperature() : 0.0f;
  engine.sampling.top_p = sampling.has_top_p() ? sampling.top_p() : 1.0f;
  engine.sampling.top_k = sampling.has_top_k() ? sampling.top_k() : 0;
  out.seed = sampling.has_seed() ? sampling.seed() : random_seed;
  engine.sampling.seed = out.seed;
  if (absl::Status valid = ValidateSamplingParams(engine.sampling); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling: ", valid.message()));
  }

  // Stop criteria.
  const serving::v1::StopCriteria& stop = request.stop();
  if (stop.has_max_tokens()) {
    if (stop.max_tokens() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("stop.max_tokens must be ≥ 0 (got ", stop.max_tokens(), ")"));
    }
    engine.max_tokens = stop.max_tokens();
  } else {
    engine.max_tokens = kDefaultMaxTokens;
    // The default never makes a request fail: it shrinks to what the context leaves.
    if (context.max_sequence_length > 0) {
      engine.max_tokens = std::min(engine.max_tokens, context.max_sequence_length - prompt_len);
    }
  }
  for (int i = 0; i < stop.stop_size(); ++i) {
    if (stop.stop(i).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("stop.stop[", i, "] is empty; stop strings need at least one character"));
    }
    engine.stop_strings.push_back(stop.stop(i));
  }
  if (!engine.stop_strings.empty() && context.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        "stop strings need a tokenizer and this deployment has none: use stop.stop_token_ids instead");
  }
  for (int i = 0; i < stop.stop_token_ids_size(); ++i) {
    const int32_t id = stop.stop_token_ids(i);
    if (id < 0 || id >= context.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stop.stop_token_ids[", i, "] = ", id,
                                                     " is outside the model's vocabulary [0, ", context.vocab_size, ")"));
    }
    engine.stop_token_ids.push_back(id);
  }
  engine.ignore_eos = stop.ignore_eos();

  // Sparse attention: the request's override on the deployment's default.
  const serving::v1::SparsePolicyOverride& sparse = request.sparse();
  SparsePolicyConfig base = context.sparse_default;
  if (sparse.has_sinks()) base.sinks = sparse.sinks();
  if (sparse.has_recent()) base.recent = sparse.recent();
  SparsePolicyOverride override_settings;
  ASSIGN_OR_RETURN(override_settings.policy, FromProtoSparsePolicy(sparse.policy()));
  if (sparse.has_budget()) override_settings.budget = sparse.budget();
  absl::StatusOr<SparsePolicyConfig> applied = ApplySparsePolicyOverride(base, override_settings);
  if (!applied.ok()) return absl::InvalidArgumentError(absl::StrCat("sparse: ", applied.status().message()));
  out.sparse = *applied;
  engine.sparse = out.sparse;
  return out;
}

}  // namespace asyncspade
