#include "services/controller/http/request_translation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "services/controller/http/openai_error.h"

namespace asyncspade::controller::http {
namespace {

using nlohmann::json;
using serving::v1::FinishReason;
using serving::v1::GenerateFinal;
using serving::v1::GenerateRequest;
using serving::v1::SparsePolicy;

absl::StatusOr<json> ParseBody(const std::string& body) {
  if (body.empty()) {
    return absl::InvalidArgumentError("the request body is empty: send a JSON object (Content-Type: application/json)");
  }
  json parsed;
  try {
    parsed = json::parse(body);
  } catch (const json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 9: ..."; the
    // bracketed id means nothing to a client.
    std::string what = e.what();
    if (const size_t end = what.find("] "); what.rfind("[json.exception", 0) == 0 && end != std::string::npos) {
      what = what.substr(end + 2);
    }
    return absl::InvalidArgumentError(absl::StrCat("the request body is not valid JSON: ", what));
  }
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request body must be a JSON object, got ", parsed.type_name()));
  }
  return parsed;
}

// Reads optional fields of one JSON object; a missing field and an explicit null both mean "not
// given". Every error names the field.
class FieldReader {
 public:
  explicit FieldReader(const json& object, std::string prefix = "") : object_(object), prefix_(std::move(prefix)) {}

  const json* Find(const std::string& name) const {
    const auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  std::string Path(const std::string& name) const { return prefix_ + name; }

  absl::Status WrongType(const std::string& name, const char* expected, const json& value) const {
    return InvalidField(Path(name),
                        absl::StrCat("'", Path(name), "' must be ", expected, ", got ", value.type_name()));
  }

  absl::StatusOr<std::optional<bool>> Bool(const std::string& name) const {
    const json* value = Find(name);
    if (value == nullptr) return std::nullopt;
    if (!value->is_boolean()) return WrongType(name, "a boolean", *value);
    return value->get<bool>();
  }

  absl::StatusOr<std::optional<std::string>> String(const std::string& name) const {
    const json* value = Find(name);
    if (value == nullptr) return std::nullopt;
    if (!value->is_string()) return WrongType(name, "a string", *value);
    return value->get<std::string>();
  }

  absl::StatusOr<std::optional<int64_t>> Integer(const std::string& name, int64_t min, int64_t max) const {
    const json* value = Find(name);
    if (value == nullptr) return std::nullopt;
    if (!value->is_number_integer()) return WrongType(name, "an integer", *value);
    if (value->is_number_unsigned() && value->get<uint64_t>() > static_cast<uint64_t>(max)) {
      return OutOfRange(name, min, max, value->dump());
    }
    const int64_t v = value->get<int64_t>();
    if (v < min || v > max) return OutOfRange(name, min, max, value->dump());
    return v;
  }

  absl::StatusOr<std::optional<double>> Number(const std::string& name, double min, double max) const {
    const json* value = Find(name);
    if (value == nullptr) return std::nullopt;
    if (!value->is_number()) return WrongType(name, "a number", *value);
    const double v = value->get<double>();
    if (!(v >= min && v <= max)) {
      return InvalidField(Path(name), absl::StrCat("'", Path(name), "' must be between ", min, " and ", max,
                                                   ", got ", value->dump()));
    }
    return v;
  }

 private:
  absl::Status OutOfRange(const std::string& name, int64_t min, int64_t max, const std::string& got) const {
    if (max == std::numeric_limits<int32_t>::max() || max == std::numeric_limits<int64_t>::max()) {
      return InvalidField(Path(name), absl::StrCat("'", Path(name), "' must be at least ", min, ", got ", got));
    }
    return InvalidField(Path(name),
                        absl::StrCat("'", Path(name), "' must be between ", min, " and ", max, ", got ", got));
  }

  const json& object_;
  std::string prefix_;
};

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// Fields that OpenAI defines but asyncspade does not implement. Their neutral values are accepted
// (clients often send defaults explicitly); anything else is refused rather than silently ignored,
// because the client would get something other than what it asked for.
absl::Status RefuseUnsupported(const FieldReader& fields, OpenAiEndpoint endpoint) {
  if (const json* n = fields.Find("n")) {
    if (!n->is_number_integer()) return fields.WrongType("n", "an integer", *n);
    if (n->get<int64_t>() != 1) {
      return InvalidField("n", absl::StrCat("n=", n->dump(),
                                            " is not supported: asyncspade generates one choice per request; send "
                                            "several requests instead"));
    }
  }
  if (const json* best_of = fields.Find("best_of")) {
    if (!(best_of->is_number_integer() && best_of->get<int64_t>() == 1)) {
      return InvalidField("best_of", "best_of is not supported (only 1): send several requests instead");
    }
  }
  if (const json* echo = fields.Find("echo")) {
    if (!(echo->is_boolean() && !echo->get<bool>())) {
      return InvalidField("echo", "echo is not supported: the response holds only the generated text");
    }
  }
  if (const json* logprobs = fields.Find("logprobs")) {
    if (!(logprobs->is_boolean() && !logprobs->get<bool>())) {
      return InvalidField("logprobs", "logprobs is not supported: leave it out (or null)");
    }
  }
  if (fields.Find("top_logprobs") != nullptr) {
    return InvalidField("top_logprobs", "top_logprobs is not supported: leave it out (or null)");
  }
  if (const json* suffix = fields.Find("suffix")) {
    if (!(suffix->is_string() && suffix->get<std::string>().empty())) {
      return InvalidField("suffix", "suffix (fill-in-the-middle) is not supported");
    }
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty", "repetition_penalty"}) {
    if (const json* value = fields.Find(penalty)) {
      const double neutral = std::string(penalty) == "repetition_penalty" ? 1.0 : 0.0;
      if (!(value->is_number() && value->get<double>() == neutral)) {
        return InvalidField(penalty, absl::StrCat(penalty, " is not supported: leave it out (or ", neutral, ")"));
      }
    }
  }
  if (const json* logit_bias = fields.Find("logit_bias")) {
    if (!(logit_bias->is_object() && logit_bias->empty())) {
      return InvalidField("logit_bias", "logit_bias is not supported: leave it out (or {})");
    }
  }
  if (endpoint == OpenAiEndpoint::kChatCompletions) {
    for (const char* field : {"tools", "functions"}) {
      if (const json* value = fields.Find(field)) {
        if (!(value->is_array() && value->empty())) {
          return InvalidField(field, absl::StrCat(field, " (tool/function calling) is not supported"));
        }
      }
    }
    for (const char* field : {"tool_choice", "function_call"}) {
      if (const json* value = fields.Find(field)) {
        if (!(value->is_string() && value->get<std::string>() == "none")) {
          return InvalidField(field, absl::StrCat(field, " is not supported (only \"none\")"));
        }
      }
    }
    if (const json* format = fields.Find("response_format")) {
      const bool plain_text = format->is_object() && format->contains("type") && (*format)["type"] == "text";
      if (!plain_text) {
        return InvalidField("response_format",
                            "response_format is not supported except {\"type\": \"text\"} (no JSON mode)");
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckModel(const FieldReader& fields, const TranslationOptions& options) {
  ASSIGN_OR_RETURN(std::optional<std::string> model, fields.String("model"));
  if (!model.has_value() || options.served_model.empty() || *model == options.served_model) return absl::OkStatus();
  return WithParam(absl::NotFoundError(absl::StrCat("the model '", *model, "' is not served here; this server serves '",
                                                    options.served_model, "' (GET /v1/models)")),
                   "model");
}

absl::StatusOr<SparsePolicy> ParseSparsePolicy(const std::string& name) {
  if (name == "dense") return serving::v1::SPARSE_POLICY_DENSE;
  if (name == "quest") return serving::v1::SPARSE_POLICY_QUEST;
  if (name == "oracle") return serving::v1::SPARSE_POLICY_ORACLE;
  if (name == "asyncspade") return serving::v1::SPARSE_POLICY_ASYNCSPADE;
  return InvalidField("sparse_policy", absl::StrCat("unknown sparse_policy '", name,
                                                    "': use one of dense, quest, oracle, asyncspade (or leave it "
                                                    "out for the deployment default)"));
}

// Sampling, stopping and sparse-attention fields shared by both endpoints.
absl::Status ParseCommonFields(const FieldReader& fields, const TranslationOptions& options, bool chat,
                               OpenAiRequest* out) {
  GenerateRequest& request = out->generate;
  RETURN_IF_ERROR(CheckModel(fields, options));
  RETURN_IF_ERROR(RefuseUnsupported(fields, out->endpoint));

  ASSIGN_OR_RETURN(std::optional<bool> stream, fields.Bool("stream"));
  out->stream = stream.value_or(false);
  if (const json* stream_options = fields.Find("stream_options")) {
    if (!stream_options->is_object()) return fields.WrongType("stream_options", "an object", *stream_options);
    FieldReader stream_fields(*stream_options, "stream_options.");
    ASSIGN_OR_RETURN(std::optional<bool> include_usage, stream_fields.Bool("include_usage"));
    out->include_usage = include_usage.value_or(false);
  }

  std::optional<int64_t> max_tokens;
  if (chat) {
    ASSIGN_OR_RETURN(max_tokens, fields.Integer("max_completion_tokens", 1, kInt32Max));
  }
  if (!max_tokens.has_value()) {
    ASSIGN_OR_RETURN(max_tokens, fields.Integer("max_tokens", 1, kInt32Max));
  }
  if (max_tokens.has_value()) {
    request.mutable_stop()->set_max_tokens(static_cast<int32_t>(*max_tokens));
  } else if (options.default_max_tokens > 0) {
    request.mutable_stop()->set_max_tokens(options.default_max_tokens);
  }

  ASSIGN_OR_RETURN(std::optional<double> temperature, fields.Number("temperature", 0.0, 2.0));
  if (temperature.has_value()) request.mutable_sampling()->set_temperature(static_cast<float>(*temperature));
  if (const json* top_p = fields.Find("top_p")) {
    if (!top_p->is_number()) return fields.WrongType("top_p", "a number", *top_p);
    const double p = top_p->get<double>();
    if (!(p > 0.0 && p <= 1.0)) {
      return InvalidField("top_p", absl::StrCat("'top_p' must be in (0, 1], got ", top_p->dump()));
    }
    request.mutable_sampling()->set_top_p(static_cast<float>(p));
  }
  // top_k is an extension (vLLM's): -1 and 0 both mean "no cut".
  ASSIGN_OR_RETURN(std::optional<int64_t> top_k, fields.Integer("top_k", -1, kInt32Max));
  if (top_k.has_value()) request.mutable_sampling()->set_top_k(static_cast<int32_t>(std::max<int64_t>(*top_k, 0)));
  if (const json* seed = fields.Find("seed")) {
    if (!seed->is_number_integer()) return fields.WrongType("seed", "an integer", *seed);
    // Any 64-bit integer: negative seeds keep their two's-complement bits.
    const uint64_t bits = seed->is_number_unsigned() ? seed->get<uint64_t>()
                                                     : static_cast<uint64_t>(seed->get<int64_t>());
    request.mutable_sampling()->set_seed(bits);
  }

  if (const json* stop = fields.Find("stop")) {
    std::vector<std::string> stops;
    if (stop->is_string()) {
      stops.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& item : *stop) {
        if (!item.is_string()) {
          return InvalidField("stop", absl::StrCat("'stop' must be a string or a list of strings; found a ",
                                                   item.type_name(), " in the list"));
        }
        stops.push_back(item.get<std::string>());
      }
    } else {
      return fields.WrongType("stop", "a string or a list of strings", *stop);
    }
    for (std::string& s : stops) {
      if (s.empty()) return InvalidField("stop", "stop strings must not be empty");
      request.mutable_stop()->add_stop(std::move(s));
    }
  }
  if (const json* ids = fields.Find("stop_token_ids")) {
    if (!ids->is_array()) return fields.WrongType("stop_token_ids", "a list of integers", *ids);
    for (const json& id : *ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kInt32Max) {
        return InvalidField("stop_token_ids", absl::StrCat("'stop_token_ids' must hold token ids (integers >= 0), "
                                                           "got ", id.dump()));
      }
      request.mutable_stop()->add_stop_token_ids(id.get<int32_t>());
    }
  }
  ASSIGN_OR_RETURN(std::optional<bool> ignore_eos, fields.Bool("ignore_eos"));
  if (ignore_eos.value_or(false)) request.mutable_stop()->set_ignore_eos(true);

  ASSIGN_OR_RETURN(std::optional<std::string> policy, fields.String("sparse_policy"));
  ASSIGN_OR_RETURN(std::optional<int64_t> budget, fields.Integer("sparse_budget", 1, kInt32Max));
  ASSIGN_OR_RETURN(std::optional<int64_t> sinks, fields.Integer("sparse_sinks", 0, kInt32Max));
  ASSIGN_OR_RETURN(std::optional<int64_t> recent, fields.Integer("sparse_recent", 0, kInt32Max));
  if (policy.has_value()) {
    ASSIGN_OR_RETURN(SparsePolicy parsed, ParseSparsePolicy(*policy));
    request.mutable_sparse()->set_policy(parsed);
  }
  if (budget.has_value()) request.mutable_sparse()->set_budget(static_cast<int32_t>(*budget));
  if (sinks.has_value()) request.mutable_sparse()->set_sinks(static_cast<int32_t>(*sinks));
  if (recent.has_value()) request.mutable_sparse()->set_recent(static_cast<int32_t>(*recent));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ParseTokenIds(const json& ids, const std::string& param) {
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (const json& id : ids) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kInt32Max) {
      return InvalidField(param, absl::StrCat("a token-id prompt must hold integers >= 0, got ", id.dump()));
    }
    out.push_back(id.get<int32_t>());
  }
  return out;
}

absl::Status ParsePrompt(const FieldReader& fields, GenerateRequest* request) {
  const json* prompt = fields.Find("prompt");
  if (prompt == nullptr) return InvalidField("prompt", "'prompt' is required (a string or a list of token ids)");
  const json* single = prompt;
  if (prompt->is_array() && !prompt->empty() && (prompt->front().is_string() || prompt->front().is_array())) {
    // A batch of prompts: OpenAI returns one choice per prompt; asyncspade serves one per request.
    if (prompt->size() != 1) {
      return InvalidField("prompt", absl::StrCat("a list of ", prompt->size(),
                                                 " prompts is not supported: send one prompt per request"));
    }
    single = &prompt->front();
  }
  if (single->is_string()) {
    request->set_text(single->get<std::string>());
    return absl::OkStatus();
  }
  if (single->is_array()) {
    if (single->empty()) return InvalidField("prompt", "the prompt is an empty list of token ids");
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseTokenIds(*single, "prompt"));
    request->mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
    return absl::OkStatus();
  }
  return fields.WrongType("prompt", "a string or a list of token ids", *single);
}

absl::StatusOr<std::string> MessageContent(const json& message, size_t index, const std::string& role) {
  const std::string param = absl::StrCat("messages[", index, "].content");
  const auto it = message.find("content");
  if (it == message.end() || it->is_null()) {
    if (role == "assistant") return std::string();  // an assistant turn that only called tools
    return InvalidField(param, absl::StrCat("'", param, "' is required for a ", role, " message"));
  }
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) {
    return InvalidField(param, absl::StrCat("'", param, "' must be a string or a list of content parts, got ",
                                            it->type_name()));
  }
  std::vector<std::string> texts;
  for (size_t p = 0; p < it->size(); ++p) {
    const json& part = (*it)[p];
    const std::string part_param = absl::StrCat(param, "[", p, "]");
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      return InvalidField(part_param, absl::StrCat("'", part_param, "' must be an object with a \"type\""));
    }
    if (part["type"] != "text") {
      return InvalidField(part_param, absl::StrCat("content parts of type '", part["type"].get<std::string>(),
                                                   "' are not supported: only \"text\""));
    }
    if (!part.contains("text") || !part["text"].is_string()) {
      return InvalidField(part_param, absl::StrCat("'", part_param, ".text' must be a string"));
    }
    texts.push_back(part["text"].get<std::string>());
  }
  // Parts are joined by newlines, as vLLM does.
  return absl::StrJoin(texts, "\n");
}

absl::Status ParseMessages(const FieldReader& fields, serving::v1::ChatInput* chat) {
  const json* messages = fields.Find("messages");
  if (messages == nullptr) return InvalidField("messages", "'messages' is required (a list of {role, content})");
  if (!messages->is_array()) return fields.WrongType("messages", "a list of messages", *messages);
  if (messages->empty()) return InvalidField("messages", "'messages' is empty: send at least one message");
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& message = (*messages)[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!message.is_object()) {
      return InvalidField(param, absl::StrCat("'", param, "' must be an object, got ", message.type_name()));
    }
    const auto role_it = message.find("role");
    if (role_it == message.end() || !role_it->is_string()) {
      return InvalidField(param + ".role", absl::StrCat("'", param, ".role' is required (a string)"));
    }
    std::string role = role_it->get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system role
    if (role != "system" && role != "user" && role != "assistant") {
      return InvalidField(param + ".role", absl::StrCat("message role '", role,
                                                        "' is not supported: use system, user or assistant"));
    }
    ASSIGN_OR_RETURN(std::string content, MessageContent(message, i, role));
    serving::v1::ChatMessage* out = chat->add_messages();
    out->set_role(std::move(role));
    out->set_content(std::move(content));
  }
  return absl::OkStatus();
}

ResponseJson TimingsJson(const serving::v1::Timings& t) {
  return {{"queue_seconds", t.queue_seconds()},
          {"first_token_seconds", t.first_token_seconds()},
          {"decode_seconds", t.decode_seconds()},
          {"mean_inter_token_seconds", t.mean_inter_token_seconds()},
          {"total_seconds", t.total_seconds()}};
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseCompletionRequest(const std::string& body, const TranslationOptions& options) {
  ASSIGN_OR_RETURN(json parsed, ParseBody(body));
  FieldReader fields(parsed);
  OpenAiRequest out;
  out.endpoint = OpenAiEndpoint::kCompletions;
  RETURN_IF_ERROR(ParseCommonFields(fields, options, /*chat=*/false, &out));
  RETURN_IF_ERROR(ParsePrompt(fields, &out.generate));
  return out;
}

absl::StatusOr<OpenAiRequest> ParseChatCompletionRequest(const std::string& body,
                                                         const TranslationOptions& options) {
  ASSIGN_OR_RETURN(json parsed, ParseBody(body));
  FieldReader fields(parsed);
  OpenAiRequest out;
  out.endpoint = OpenAiEndpoint::kChatCompletions;
  RETURN_IF_ERROR(ParseCommonFields(fields, options, /*chat=*/true, &out));
  serving::v1::ChatInput* chat = out.generate.mutable_chat();
  RETURN_IF_ERROR(ParseMessages(fields, chat));
  ASSIGN_OR_RETURN(std::optional<bool> add_generation_prompt, fields.Bool("add_generation_prompt"));
  chat->set_add_generation_prompt(add_generation_prompt.value_or(true));
  if (const json* kwargs = fields.Find("chat_template_kwargs")) {
    if (!kwargs->is_object()) return fields.WrongType("chat_template_kwargs", "an object", *kwargs);
    FieldReader kwarg_fields(*kwargs, "chat_template_kwargs.");
    ASSIGN_OR_RETURN(std::optional<bool> enable_thinking, kwarg_fields.Bool("enable_thinking"));
    if (enable_thinking.has_value()) chat->set_enable_thinking(*enable_thinking);
  }
  return out;
}

std::string OpenAiFinishReason(FinishReason reason) {
  switch (reason) {
    case serving::v1::FINISH_REASON_LENGTH: return "length";
    case serving::v1::FINISH_REASON_STOP:
    case serving::v1::FINISH_REASON_STOP_STRING: return "stop";
    case serving::v1::FINISH_REASON_ABORTED: return "abort";
    case serving::v1::FINISH_REASON_ERROR: return "error";
    default: return "stop";
  }
}

std::string SparsePolicyName(SparsePolicy policy) {
  switch (policy) {
    case serving::v1::SPARSE_POLICY_DENSE: return "dense";
    case serving::v1::SPARSE_POLICY_QUEST: return "quest";
    case serving::v1::SPARSE_POLICY_ORACLE: return "oracle";
    case serving::v1::SPARSE_POLICY_ASYNCSPADE: return "asyncspade";
    default: return "default";
  }
}

ResponseJson UsageJson(const serving::v1::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens()},
          {"completion_tokens", usage.completion_tokens()},
          {"total_tokens", usage.prompt_tokens() + usage.completion_tokens()}};
}

ResponseJson AsyncspadeExtensionJson(const GenerateFinal& final) {
  ResponseJson out = {{"policy", SparsePolicyName(final.policy())},
              {"seed", final.seed()},
              {"served_by", final.served_by()},
              {"timings", TimingsJson(final.timings())},
              {"sparse_stats",
               {{"sparse_layer_steps", final.sparse_stats().sparse_layer_steps()},
                {"dense_fallbacks", final.sparse_stats().dense_fallbacks()},
                {"stale_selections", final.sparse_stats().stale_selections()}}}};
  if (!final.matched_stop().empty()) out["matched_stop"] = final.matched_stop();
  return out;
}

ResponseBuilder::ResponseBuilder(OpenAiEndpoint endpoint, const std::string& request_id,
                                 int64_t created_unix_seconds, std::string model, bool include_usage)
    : endpoint_(endpoint),
      id_(absl::StrCat(endpoint == OpenAiEndpoint::kChatCompletions ? "chatcmpl-" : "cmpl-", request_id)),
      created_(created_unix_seconds),
      model_(std::move(model)),
      include_usage_(include_usage) {}

ResponseJson ResponseBuilder::ChunkSkeleton() const {
  ResponseJson chunk = {{"id", id_},
                {"object", endpoint_ == OpenAiEndpoint::kChatCompletions ? "chat.completion.chunk" : "text_completion"},
                {"created", created_},
                {"model", model_}};
  return chunk;
}

ResponseJson ResponseBuilder::Complete(const std::string& text, const GenerateFinal& final) const {
  ResponseJson choice = {{"index", 0}};
  if (endpoint_ == OpenAiEndpoint::kChatCompletions) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = OpenAiFinishReason(final.finish_reason());
  return {{"id", id_},
          {"object", endpoint_ == OpenAiEndpoint::kChatCompletions ? "chat.completion" : "text_completion"},
          {"created", created_},
          {"model", model_},
          {"choices", ResponseJson::array({std::move(choice)})},
          {"usage", UsageJson(final.usage())},
          {"asyncspade", AsyncspadeExtensionJson(final)}};
}

std::vector<ResponseJson> ResponseBuilder::StreamStart() const {
  if (endpoint_ != OpenAiEndpoint::kChatCompletions) return {};
  ResponseJson chunk = ChunkSkeleton();
  chunk["choices"] = ResponseJson::array(
      {{{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
        {"finish_reason", nullptr}}});
  if (include_usage_) chunk["usage"] = nullptr;
  return {std::move(chunk)};
}

ResponseJson ResponseBuilder::StreamText(const std::string& text) const {
  ResponseJson chunk = ChunkSkeleton();
  ResponseJson choice = {{"index", 0}};
  if (endpoint_ == OpenAiEndpoint::kChatCompletions) {
    choice["delta"] = {{"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = nullptr;
  chunk["choices"] = ResponseJson::array({std::move(choice)});
  // With include_usage, OpenAI sends "usage": null on every chunk but the last.
  if (include_usage_) chunk["usage"] = nullptr;
  return chunk;
}

std::vector<ResponseJson> ResponseBuilder::StreamEnd(const GenerateFinal& final) const {
  std::vector<ResponseJson> chunks;
  ResponseJson last = ChunkSkeleton();
  ResponseJson choice = {{"index", 0}};
  if (endpoint_ == OpenAiEndpoint::kChatCompletions) {
    choice["delta"] = ResponseJson::object();
  } else {
    choice["text"] = "";
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = OpenAiFinishReason(final.finish_reason());
  last["choices"] = ResponseJson::array({std::move(choice)});
  if (include_usage_) last["usage"] = nullptr;
  last["asyncspade"] = AsyncspadeExtensionJson(final);
  chunks.push_back(std::move(last));
  if (include_usage_) {
    ResponseJson usage = ChunkSkeleton();
    usage["choices"] = ResponseJson::array();
    usage["usage"] = UsageJson(final.usage());
    chunks.push_back(std::move(usage));
  }
  return chunks;
}

std::string SseEvent(const ResponseJson& payload) {
  // Generated text is valid UTF-8 by contract; replacing rather than throwing keeps one bad byte
  // from killing a stream.
  return absl::StrCat("data: ", payload.dump(-1, ' ', false, ResponseJson::error_handler_t::replace), "\n\n");
}

}  // namespace asyncspade::controller::http
