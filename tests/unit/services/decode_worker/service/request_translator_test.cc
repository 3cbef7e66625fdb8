// GenerateRequest → engine request: inputs, proto3 optional defaults, stop criteria, the sparse
// override, and the errors a bad request gets before anything is streamed.
#include "services/decode_worker/service/request_translator.h"

#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/unit/services/decode_worker/stories_test_util.h"

namespace asyncspade {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class RequestTranslatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    context_.vocab_size = 512;
    context_.max_sequence_length = 512;
    context_.sparse_default.policy = SparsePolicy::kAsyncSpade;
    context_.sparse_default.budget = 64;
    context_.sparse_default.sinks = 4;
    context_.sparse_default.recent = 32;
  }
  absl::StatusOr<TranslatedRequest> Translate(const serving::v1::GenerateRequest& request, uint64_t seed = 99) {
    return TranslateGenerateRequest(request, context_, seed);
  }
  static serving::v1::GenerateRequest Ids(std::vector<int32_t> ids) {
    serving::v1::GenerateRequest request;
    request.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
    return request;
  }

  RequestTranslationContext context_;
};

TEST_F(RequestTranslatorTest, TokenIdsWithUnsetFieldsTakeTheDocumentedDefaults) {
  absl::StatusOr<TranslatedRequest> out = Translate(Ids({1, 5, 7}), /*seed=*/1234);
  ASSERT_TRUE(out.ok()) << out.status();
  const GenerationRequest& engine = out->engine_request;
  EXPECT_THAT(engine.prompt_ids, ElementsAre(1, 5, 7));
  EXPECT_EQ(engine.max_tokens, kDefaultMaxTokens);
  EXPECT_EQ(engine.sampling.temperature, 0.0f);
  EXPECT_EQ(engine.sampling.top_p, 1.0f);
  EXPECT_EQ(engine.sampling.top_k, 0);
  EXPECT_EQ(out->seed, 1234u) << "an unset seed is the server's";
  EXPECT_EQ(engine.sampling.seed, 1234u);
  EXPECT_FALSE(engine.ignore_eos);
  EXPECT_EQ(out->sparse.policy, SparsePolicy::kAsyncSpade);
  EXPECT_EQ(out->sparse.budget, 64);
}

TEST_F(RequestTranslatorTest, SetFieldsAreTakenIncludingExplicitZeros) {
  serving::v1::GenerateRequest request = Ids({1, 2});
  request.mutable_sampling()->set_temperature(0.7f);
  request.mutable_sampling()->set_top_p(0.9f);
  request.mutable_sampling()->set_top_k(20);
  request.mutable_sampling()->set_seed(0);  // explicitly 0, not "unset"
  request.mutable_stop()->set_max_tokens(0);
  request.mutable_stop()->add_stop_token_ids(13);
  request.mutable_stop()->set_ignore_eos(true);
  request.mutable_sparse()->set_policy(serving::v1::SPARSE_POLICY_QUEST);
  request.mutable_sparse()->set_budget(128);
  request.mutable_sparse()->set_sinks(0);
  request.mutable_sparse()->set_recent(8);
  absl::StatusOr<TranslatedRequest> out = Translate(request, /*seed=*/555);
  ASSERT_TRUE(out.ok()) << out.status();
  const GenerationRequest& engine = out->engine_request;
  EXPECT_FLOAT_EQ(engine.sampling.temperature, 0.7f);
  EXPECT_FLOAT_EQ(engine.sampling.top_p, 0.9f);
  EXPECT_EQ(engine.sampling.top_k, 20);
  EXPECT_EQ(out->seed, 0u);
  EXPECT_EQ(engine.max_tokens, 0);
  EXPECT_THAT(engine.stop_token_ids, ElementsAre(13));
  EXPECT_TRUE(engine.ignore_eos);
  EXPECT_EQ(out->sparse.policy, SparsePolicy::kQuest);
  EXPECT_EQ(out->sparse.budget, 128);
  EXPECT_EQ(out->sparse.sinks, 0);
  EXPECT_EQ(out->sparse.recent, 8);
}

TEST_F(RequestTranslatorTest, DefaultMaxTokensShrinksToTheContextButAnExplicitOneIsKept) {
  serving::v1::GenerateRequest request = Ids(std::vector<int32_t>(400, 3));
  absl::StatusOr<TranslatedRequest> out = Translate(request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->engine_request.max_tokens, 112);
  request.mutable_stop()->set_max_tokens(300);
  out = Translate(request);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->engine_request.max_tokens, 300) << "the engine refuses it with the exact numbers";
}

TEST_F(RequestTranslatorTest, BadRequestsAreRefusedNamingTheField) {
  struct Case {
    serving::v1::GenerateRequest request;
    absl::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({serving::v1::GenerateRequest(), absl::StatusCode::kInvalidArgument, "no input"});
  cases.push_back({Ids({}), absl::StatusCode::kInvalidArgument, "token_ids.ids is empty"});
  cases.push_back({Ids({1, 512}), absl::StatusCode::kInvalidArgument, "token_ids.ids[1] = 512"});
  cases.push_back({Ids({-1}), absl::StatusCode::kInvalidArgument, "token_ids.ids[0] = -1"});
  cases.push_back({Ids(std::vector<int32_t>(512, 1)), absl::StatusCode::kInvalidArgument, "at most 512"});
  serving::v1::GenerateRequest text;
  text.set_text("hello");
  cases.push_back({text, absl::StatusCode::kFailedPrecondition, "no tokenizer"});
  serving::v1::GenerateRequest c = Ids({1});
  c.mutable_sampling()->set_top_p(1.5f);
  cases.push_back({c, absl::StatusCode::kInvalidArgument, "sampling: "});
  c = Ids({1});
  c.mutable_sampling()->set_top_k(-2);
  cases.push_back({c, absl::StatusCode::kInvalidArgument, "top_k"});
  c = Ids({1});
  c.mutable_stop()->set_max_tokens(-1);
  cases.push_back({c, absl::StatusCode::kInvalidArgument, "stop.max_tokens"});
  c = Ids({1});
  c.mutable_stop()->add_stop("");
  cases.push_back({c, absl::StatusCode::kInvalidArgument, "stop.stop[0] is empty"});
  c = Ids({1});
  c.mutable_stop()->add_stop("x");
  cases.push_back({c, absl::StatusCode::kFailedPrecondition, "stop strings need a tokenizer"});
  c = Ids({1});
  c.mutable_stop()->add_stop_token_ids(600);
  cases.push_back({c, absl::StatusCode::kInvalidArgument, "stop.stop_token_ids[0] = 600"});
  c = Ids({1});
  c.mutable_sparse()->set_policy(static_cast<serving::v1::SparsePolicy>(42));
  cases.push_back({c, absl::StatusCode::kInvalidArgument, "sparse.policy: unknown value 42"});
  c = Ids({1});
  c.mutable_sparse()->set_budget(0);
  cases.push_back({c, absl::StatusCode::kInvalidArgument, "budget"});
  c = Ids({1});
  c.mutable_sparse()->set_recent(0);
  cases.push_back({c, absl::StatusCode::kInvalidArgument, "recent"});
  serving::v1::GenerateRequest chat;
  chat.mutable_chat();
  cases.push_back({chat, absl::StatusCode::kInvalidArgument, "chat.messages is empty"});
  for (const Case& bad : cases) {
    absl::StatusOr<TranslatedRequest> out = Translate(bad.request);
    ASSERT_FALSE(out.ok()) << bad.request.ShortDebugString();
    EXPECT_EQ(out.status().code(), bad.code) << out.status();
    EXPECT_THAT(out.status().message(), HasSubstr(bad.message)) << bad.request.ShortDebugString();
  }
}

TEST_F(RequestTranslatorTest, TextGetsTheTokenizersSpecialTokensAndChatUsesTheTemplate) {
  ASYNCSPADE_REQUIRE_STORIES();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::FromModelDir(testing::StoriesDir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  context_.tokenizer = tokenizer->get();
  const testing::GoldenPrompt prompt = testing::LoadStoriesGolden().prompts[0];
  serving::v1::GenerateRequest request;
  request.set_text(prompt.text);
  absl::StatusOr<TranslatedRequest> out = Translate(request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->engine_request.prompt_ids, prompt.ids) << "BOS first, as `asyncspade run --prompt`";

  // stories260K has no chat template.
  serving::v1::GenerateRequest chat;
  auto* message = chat.mutable_chat()->add_messages();
  message->set_role("user");
  message->set_content("hi");
  EXPECT_EQ(Translate(chat).status().code(), absl::StatusCode::kFailedPrecondition);

  // A ChatML template renders the conversation; the template writes the special tokens itself.
  absl::StatusOr<ChatTemplate> chat_template = ChatTemplate::FromTemplateText(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
      "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}");
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  context_.chat_template = &*chat_template;
  chat.mutable_chat()->set_add_generation_prompt(true);
  out = Translate(chat);
  ASSERT_TRUE(out.ok()) << out.status();
  const std::string rendered = chat_template->Render({{"user", "hi"}}, true, true);
  EXPECT_EQ(out->engine_request.prompt_ids, (*tokenizer)->Encode(rendered, /*add_special_tokens=*/false));
  message->set_role("robot");
  EXPECT_THAT(Translate(chat).status().message(), HasSubstr("chat.messages[0].role is 'robot'"));
}

TEST(RequestTranslatorEnumsTest, PoliciesAndFinishReasonsMapBothWays) {
  for (SparsePolicy policy :
       {SparsePolicy::kDense, SparsePolicy::kQuest, SparsePolicy::kOracle, SparsePolicy::kAsyncSpade}) {
    absl::StatusOr<std::optional<SparsePolicy>> back = FromProtoSparsePolicy(ToProtoSparsePolicy(policy));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(back->value(), policy);
  }
  EXPECT_FALSE(FromProtoSparsePolicy(serving::v1::SPARSE_POLICY_UNSPECIFIED)->has_value());
  EXPECT_EQ(ToProtoFinishReason(FinishReason::kLength), serving::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(ToProtoFinishReason(FinishReason::kStop), serving::v1::FINISH_REASON_STOP);
  EXPECT_EQ(ToProtoFinishReason(FinishReason::kStopString), serving::v1::FINISH_REASON_STOP_STRING);
  EXPECT_EQ(ToProtoFinishReason(FinishReason::kAbort), serving::v1::FINISH_REASON_ABORTED);
}

}  // namespace
}  // namespace asyncspade
