#include "services/controller/http/request_translation.h"

#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/controller/http/openai_error.h"

namespace asyncspade::controller::http {
namespace {

using json = ResponseJson;
using serving::v1::GenerateFinal;

TranslationOptions Options() { return {.served_model = "fake-model", .default_max_tokens = 0}; }

absl::StatusOr<OpenAiRequest> Completion(const json& body, TranslationOptions options = Options()) {
  return ParseCompletionRequest(body.dump(), options);
}
absl::StatusOr<OpenAiRequest> Chat(const json& body, TranslationOptions options = Options()) {
  return ParseChatCompletionRequest(body.dump(), options);
}

// The error's "param", as a client sees it.
std::string ParamOf(const absl::Status& status) {
  const json body = ErrorBody(status);
  return body["error"]["param"].is_null() ? "<null>" : body["error"]["param"].get<std::string>();
}

TEST(RequestTranslationTest, CompletionFieldsMapOntoTheGenerateRequest) {
  auto parsed = Completion({{"model", "fake-model"},
                            {"prompt", "Once upon a time"},
                            {"max_tokens", 64},
                            {"temperature", 0.7},
                            {"top_p", 0.9},
                            {"top_k", 40},
                            {"seed", 7},
                            {"stop", {"\n\n", "THE END"}},
                            {"stream", true},
                            {"stream_options", {{"include_usage", true}}},
                            {"sparse_policy", "quest"},
                            {"sparse_budget", 256},
                            {"user", "ignored"},
                            {"n", 1},
                            {"logprobs", nullptr},
                            {"echo", false},
                            {"presence_penalty", 0}});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const serving::v1::GenerateRequest& request = parsed->generate;
  EXPECT_EQ(parsed->endpoint, OpenAiEndpoint::kCompletions);
  EXPECT_TRUE(parsed->stream);
  EXPECT_TRUE(parsed->include_usage);
  EXPECT_EQ(request.text(), "Once upon a time");
  EXPECT_EQ(request.stop().max_tokens(), 64);
  EXPECT_FLOAT_EQ(request.sampling().temperature(), 0.7f);
  EXPECT_FLOAT_EQ(request.sampling().top_p(), 0.9f);
  EXPECT_EQ(request.sampling().top_k(), 40);
  EXPECT_EQ(request.sampling().seed(), 7u);
  ASSERT_EQ(request.stop().stop_size(), 2);
  EXPECT_EQ(request.stop().stop(0), "\n\n");
  EXPECT_EQ(request.stop().stop(1), "THE END");
  EXPECT_EQ(request.sparse().policy(), serving::v1::SPARSE_POLICY_QUEST);
  EXPECT_EQ(request.sparse().budget(), 256);
  EXPECT_FALSE(request.sparse().has_sinks());
}

TEST(RequestTranslationTest, UnsetFieldsStayUnset) {
  auto parsed = Completion({{"prompt", "x"}, {"max_tokens", nullptr}, {"temperature", nullptr}});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->generate.stop().has_max_tokens());
  EXPECT_FALSE(parsed->generate.sampling().has_temperature());
  EXPECT_FALSE(parsed->generate.sampling().has_seed());
  EXPECT_FALSE(parsed->generate.has_sparse());
  EXPECT_FALSE(parsed->stream);

  auto defaulted = Completion({{"prompt", "x"}}, {.served_model = "", .default_max_tokens = 99});
  ASSERT_TRUE(defaulted.ok());
  EXPECT_EQ(defaulted->generate.stop().max_tokens(), 99);
}

TEST(RequestTranslationTest, PromptForms) {
  auto ids = Completion({{"prompt", {1, 2, 3}}});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(std::vector<int32_t>(ids->generate.token_ids().ids().begin(), ids->generate.token_ids().ids().end()),
            (std::vector<int32_t>{1, 2, 3}));

  auto one_string = Completion({{"prompt", {"only one"}}});
  ASSERT_TRUE(one_string.ok()) << one_string.status();
  EXPECT_EQ(one_string->generate.text(), "only one");

  auto one_id_list = Completion({{"prompt", json::array({json::array({5, 6})})}});
  ASSERT_TRUE(one_id_list.ok()) << one_id_list.status();
  EXPECT_EQ(one_id_list->generate.token_ids().ids_size(), 2);

  auto batch = Completion({{"prompt", {"a", "b"}}});
  EXPECT_EQ(batch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(batch.status().message().find("one prompt per request"), std::string::npos) << batch.status();

  EXPECT_EQ(Completion({{"prompt", {1, -2}}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Completion({{"prompt", json::array()}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Completion({{"prompt", 3}}).status().code(), absl::StatusCode::kInvalidArgument);
  auto missing = Completion({{"max_tokens", 3}});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParamOf(missing.status()), "prompt");
}

TEST(RequestTranslationTest, MalformedBodiesSayWhatIsWrong) {
  auto bad_json = ParseCompletionRequest("{\"prompt\": \"x\",", Options());
  EXPECT_EQ(bad_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_json.status().message().find("not valid JSON"), std::string::npos) << bad_json.status();
  EXPECT_EQ(bad_json.status().message().find("json.exception"), std::string::npos) << bad_json.status();

  auto not_object = ParseCompletionRequest("[1, 2]", Options());
  EXPECT_NE(not_object.status().message().find("must be a JSON object, got array"), std::string::npos);

  auto empty = ParseChatCompletionRequest("", Options());
  EXPECT_NE(empty.status().message().find("empty"), std::string::npos);
}

TEST(RequestTranslationTest, WrongTypesAndRangesNameTheField) {
  struct Case {
    json body;
    std::string param;
    std::string message_part;
  };
  const std::vector<Case> cases = {
      {{{"prompt", "x"}, {"max_tokens", "ten"}}, "max_tokens", "must be an integer, got string"},
      {{{"prompt", "x"}, {"max_tokens", 0}}, "max_tokens", "at least 1"},
      {{{"prompt", "x"}, {"max_tokens", 1.5}}, "max_tokens", "must be an integer"},
      {{{"prompt", "x"}, {"temperature", 3}}, "temperature", "between 0 and 2"},
      {{{"prompt", "x"}, {"temperature", "hot"}}, "temperature", "must be a number"},
      {{{"prompt", "x"}, {"top_p", 0}}, "top_p", "(0, 1]"},
      {{{"prompt", "x"}, {"stream", "yes"}}, "stream", "must be a boolean"},
      {{{"prompt", "x"}, {"stop", 5}}, "stop", "a string or a list of strings"},
      {{{"prompt", "x"}, {"stop", {"ok", 5}}}, "stop", "found a number"},
      {{{"prompt", "x"}, {"stop", ""}}, "stop", "must not be empty"},
      {{{"prompt", "x"}, {"stream_options", {{"include_usage", 1}}}}, "stream_options.include_usage",
       "must be a boolean"},
      {{{"prompt", "x"}, {"n", 2}}, "n", "n=2 is not supported"},
      {{{"prompt", "x"}, {"best_of", 3}}, "best_of", "not supported"},
      {{{"prompt", "x"}, {"echo", true}}, "echo", "not supported"},
      {{{"prompt", "x"}, {"logprobs", 5}}, "logprobs", "not supported"},
      {{{"prompt", "x"}, {"frequency_penalty", 0.5}}, "frequency_penalty", "not supported"},
      {{{"prompt", "x"}, {"logit_bias", {{"50256", -100}}}}, "logit_bias", "not supported"},
      {{{"prompt", "x"}, {"sparse_policy", "magic"}}, "sparse_policy", "dense, quest, oracle, asyncspade"},
      {{{"prompt", "x"}, {"sparse_budget", 0}}, "sparse_budget", "at least 1"},
      {{{"prompt", "x"}, {"seed", "seven"}}, "seed", "must be an integer"},
  };
  for (const Case& c : cases) {
    auto parsed = Completion(c.body);
    ASSERT_FALSE(parsed.ok()) << c.body.dump();
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << c.body.dump();
    EXPECT_EQ(ParamOf(parsed.status()), c.param) << c.body.dump();
    EXPECT_NE(parsed.status().message().find(c.message_part), std::string::npos)
        << c.body.dump() << " -> " << parsed.status();
  }
}

TEST(RequestTranslationTest, AnotherModelIsNotFound) {
  auto parsed = Completion({{"model", "gpt-4"}, {"prompt", "x"}});
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(parsed.status().message().find("serves 'fake-model'"), std::string::npos) << parsed.status();
  EXPECT_TRUE(Completion({{"model", "gpt-4"}, {"prompt", "x"}}, {.served_model = "", .default_max_tokens = 0}).ok());
}

TEST(RequestTranslationTest, ChatMessagesAndExtensions) {
  auto parsed = Chat({{"model", "fake-model"},
                      {"messages",
                       {{{"role", "developer"}, {"content", "Be brief."}},
                        {{"role", "user"},
                         {"content",
                          {{{"type", "text"}, {"text", "Part one."}}, {{"type", "text"}, {"text", "Two."}}}}},
                        {{"role", "assistant"}, {"content", nullptr}},
                        {{"role", "user"}, {"content", "Go on."}}}},
                      {"max_tokens", 10},
                      {"max_completion_tokens", 20},
                      {"chat_template_kwargs", {{"enable_thinking", false}}},
                      {"tools", json::array()},
                      {"response_format", {{"type", "text"}}}});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->endpoint, OpenAiEndpoint::kChatCompletions);
  const serving::v1::ChatInput& chat = parsed->generate.chat();
  ASSERT_EQ(chat.messages_size(), 4);
  EXPECT_EQ(chat.messages(0).role(), "system");
  EXPECT_EQ(chat.messages(1).content(), "Part one.\nTwo.");
  EXPECT_EQ(chat.messages(2).role(), "assistant");
  EXPECT_EQ(chat.messages(2).content(), "");
  EXPECT_TRUE(chat.add_generation_prompt());
  ASSERT_TRUE(chat.has_enable_thinking());
  EXPECT_FALSE(chat.enable_thinking());
  EXPECT_EQ(parsed->generate.stop().max_tokens(), 20);  // max_completion_tokens wins

  auto without_thinking_flag = Chat({{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  ASSERT_TRUE(without_thinking_flag.ok());
  EXPECT_FALSE(without_thinking_flag->generate.chat().has_enable_thinking());
}

TEST(RequestTranslationTest, ChatErrorsNameTheMessage) {
  struct Case {
    json body;
    std::string param;
  };
  const std::vector<Case> cases = {
      {{{"model", "fake-model"}}, "messages"},
      {{{"messages", json::array()}}, "messages"},
      {{{"messages", "hi"}}, "messages"},
      {{{"messages", {{{"role", "user"}, {"content", "a"}}, {{"content", "no role"}}}}}, "messages[1].role"},
      {{{"messages", {{{"role", "tool"}, {"content", "x"}}}}}, "messages[0].role"},
      {{{"messages", {{{"role", "user"}}}}}, "messages[0].content"},
      {{{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", "u"}}}}}}}},
       "messages[0].content[0]"},
      {{{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"tools", {{{"type", "function"}}}}}, "tools"},
      {{{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"response_format", {{"type", "json_object"}}}},
       "response_format"},
      {{{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"chat_template_kwargs", {{"enable_thinking", "no"}}}},
       "chat_template_kwargs.enable_thinking"},
      {{{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"logprobs", true}}, "logprobs"},
  };
  for (const Case& c : cases) {
    auto parsed = Chat(c.body);
    ASSERT_FALSE(parsed.ok()) << c.body.dump();
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << c.body.dump();
    EXPECT_EQ(ParamOf(parsed.status()), c.param) << c.body.dump() << " -> " << parsed.status();
  }
}

GenerateFinal MakeFinal(serving::v1::FinishReason reason) {
  GenerateFinal final;
  final.set_finish_reason(reason);
  final.mutable_usage()->set_prompt_tokens(11);
  final.mutable_usage()->set_completion_tokens(4);
  final.set_policy(serving::v1::SPARSE_POLICY_ORACLE);
  final.set_seed(99);
  return final;
}

TEST(ResponseBuilderTest, CompletionResponse) {
  ResponseBuilder builder(OpenAiEndpoint::kCompletions, "abc", 1700000000, "fake-model", false);
  const json response = builder.Complete("Hi there", MakeFinal(serving::v1::FINISH_REASON_LENGTH));
  EXPECT_EQ(response["id"], "cmpl-abc");
  EXPECT_EQ(response["object"], "text_completion");
  EXPECT_EQ(response["created"], 1700000000);
  EXPECT_EQ(response["model"], "fake-model");
  ASSERT_EQ(response["choices"].size(), 1u);
  EXPECT_EQ(response["choices"][0]["text"], "Hi there");
  EXPECT_EQ(response["choices"][0]["index"], 0);
  EXPECT_TRUE(response["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(response["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(response["usage"], json({{"prompt_tokens", 11}, {"completion_tokens", 4}, {"total_tokens", 15}}));
  EXPECT_EQ(response["asyncspade"]["policy"], "oracle");
  EXPECT_EQ(response["asyncspade"]["seed"], 99);
}

TEST(ResponseBuilderTest, ChatStreamSequence) {
  ResponseBuilder builder(OpenAiEndpoint::kChatCompletions, "r1", 5, "m", /*include_usage=*/true);
  const std::vector<json> start = builder.StreamStart();
  ASSERT_EQ(start.size(), 1u);
  EXPECT_EQ(start[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(start[0]["id"], "chatcmpl-r1");
  EXPECT_EQ(start[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(start[0]["usage"].is_null());

  const json text = builder.StreamText("tok");
  EXPECT_EQ(text["choices"][0]["delta"], json({{"content", "tok"}}));
  EXPECT_TRUE(text["choices"][0]["finish_reason"].is_null());

  const std::vector<json> end = builder.StreamEnd(MakeFinal(serving::v1::FINISH_REASON_STOP_STRING));
  ASSERT_EQ(end.size(), 2u);
  EXPECT_EQ(end[0]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(end[0]["choices"][0]["delta"], json::object());
  EXPECT_TRUE(end[1]["choices"].empty());
  EXPECT_EQ(end[1]["usage"]["total_tokens"], 15);

  ResponseBuilder no_usage(OpenAiEndpoint::kCompletions, "r2", 5, "m", false);
  EXPECT_TRUE(no_usage.StreamStart().empty());
  EXPECT_FALSE(no_usage.StreamText("x").contains("usage"));
  EXPECT_EQ(no_usage.StreamEnd(MakeFinal(serving::v1::FINISH_REASON_ABORTED)).size(), 1u);
  EXPECT_EQ(no_usage.StreamEnd(MakeFinal(serving::v1::FINISH_REASON_ABORTED))[0]["choices"][0]["finish_reason"],
            "abort");
}

TEST(ResponseBuilderTest, SseFraming) {
  EXPECT_EQ(SseEvent(json({{"a", 1}})), "data: {\"a\":1}\n\n");
  // Invalid UTF-8 is replaced rather than aborting the stream.
  EXPECT_EQ(SseEvent(json({{"t", std::string("a\xff")}})), "data: {\"t\":\"a\xEF\xBF\xBD\"}\n\n");
  EXPECT_EQ(std::string(kSseDone), "data: [DONE]\n\n");
}

TEST(OpenAiErrorTest, StatusCodesMapToHttp) {
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kFailedPrecondition), 409);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDeadlineExceeded), 504);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kInternal), 500);
  EXPECT_EQ(HttpStatusFor(absl::StatusCode::kDataLoss), 500);

  const json body = ErrorBody(InvalidField("top_p", "'top_p' must be in (0, 1]"));
  EXPECT_EQ(body, json({{"error",
                         {{"message", "'top_p' must be in (0, 1]"},
                          {"type", "invalid_request_error"},
                          {"param", "top_p"},
                          {"code", "invalid_argument"}}}}));
  EXPECT_TRUE(ErrorBody(absl::UnavailableError("down"))["error"]["param"].is_null());
  EXPECT_EQ(ErrorBody(absl::UnavailableError("down"))["error"]["type"], "service_unavailable_error");
}

}  // namespace
}  // namespace asyncspade::controller::http
