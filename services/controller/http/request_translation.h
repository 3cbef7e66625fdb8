// The OpenAI wire format <-> the Generation API: request bodies of /v1/completions and
// /v1/chat/completions become a GenerateRequest; a stream of GenerateResponses becomes an OpenAI
// response or server-sent-event chunks. Pure functions, so they are tested without sockets.
// What is accepted, ignored and refused is documented in docs/api.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "asyncspade/serving/v1/generation.pb.h"
#include "nlohmann/json.hpp"
#include "services/controller/http/openai_error.h"

namespace asyncspade::controller::http {

enum class OpenAiEndpoint { kCompletions, kChatCompletions };

struct TranslationOptions {
  // The model this server serves. A request naming another model is NOT_FOUND; empty accepts any.
  std::string served_model;
  // max_tokens when the request gives none; 0 leaves it to the decode worker's default.
  int default_max_tokens = 0;
};

struct OpenAiRequest {
  OpenAiEndpoint endpoint = OpenAiEndpoint::kCompletions;
  serving::v1::GenerateRequest generate;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
};

// Errors are INVALID_ARGUMENT (malformed JSON, a field of the wrong type or range, an unsupported
// feature such as n > 1) or NOT_FOUND (another model), naming the field (see WithParam).
absl::StatusOr<OpenAiRequest> ParseCompletionRequest(const std::string& body, const TranslationOptions& options);
absl::StatusOr<OpenAiRequest> ParseChatCompletionRequest(const std::string& body,
                                                         const TranslationOptions& options);

// "stop" | "length" | "abort" | "error" (OpenAI's names where it has one; vLLM's otherwise).
std::string OpenAiFinishReason(serving::v1::FinishReason reason);
std::string SparsePolicyName(serving::v1::SparsePolicy policy);

// Builds the response objects of one request.
class ResponseBuilder {
 public:
  // `request_id` is the router's; the OpenAI id is "cmpl-<id>" or "chatcmpl-<id>".
  ResponseBuilder(OpenAiEndpoint endpoint, const std::string& request_id, int64_t created_unix_seconds,
                  std::string model, bool include_usage);

  const std::string& id() const { return id_; }

  // The non-streaming response: text_completion or chat.completion.
  ResponseJson Complete(const std::string& text, const serving::v1::GenerateFinal& final) const;

  // Streaming: chunks to send before any text (chat: the assistant role delta), one chunk per
  // piece of text, and the chunks that end the stream (the finish reason, then the usage when asked).
  std::vector<ResponseJson> StreamStart() const;
  ResponseJson StreamText(const std::string& text) const;
  std::vector<ResponseJson> StreamEnd(const serving::v1::GenerateFinal& final) const;

 private:
  ResponseJson ChunkSkeleton() const;

  OpenAiEndpoint endpoint_;
  std::string id_;
  int64_t created_;
  std::string model_;
  bool include_usage_;
};

// {"prompt_tokens", "completion_tokens", "total_tokens"}.
ResponseJson UsageJson(const serving::v1::Usage& usage);
// What the decode worker reported beyond OpenAI's fields: policy, seed, timings, sparse stats...
ResponseJson AsyncspadeExtensionJson(const serving::v1::GenerateFinal& final);

// One server-sent event carrying `payload`: "data: <json>\n\n".
std::string SseEvent(const ResponseJson& payload);
inline constexpr char kSseDone[] = "data: [DONE]\n\n";

}  // namespace asyncspade::controller::http
