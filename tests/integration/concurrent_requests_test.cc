// 32 concurrent streaming requests through a real deployment on stories260K: under the dense policy
// each stream gives exactly what the offline `asyncspade run` gives for its prompt (greedy), batched
// or not; under asyncspade, with two KV-selector processes splitting the layers, all 32 complete
// without errors and attend sparsely.
#include "gtest/gtest.h"
#include "tests/integration/test_deployment.h"

namespace asyncspade::testing {
namespace {

constexpr int kStreams = 32;

// Distinct prompts of 4 to 11 token ids (BOS first), from ids of stories260K's 512-token vocabulary.
std::vector<std::vector<int32_t>> DistinctPrompts() {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < kStreams; ++i) {
    std::vector<int32_t> prompt = {1};
    const int length = 3 + i % 8;
    for (int j = 0; j < length; ++j) prompt.push_back(259 + (i * 37 + j * 53) % 250);
    prompts.push_back(std::move(prompt));
  }
  return prompts;
}

class ConcurrentRequestsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = WhyNoStoriesDeployment(); !why.empty()) GTEST_SKIP() << why;
  }
  TempDir dir_;
};

TEST_F(ConcurrentRequestsTest, ThirtyTwoDenseStreamsGiveWhatTheOfflineRunGives) {
  const int max_tokens = 64;
  const std::vector<std::vector<int32_t>> prompts = DistinctPrompts();
  std::vector<std::vector<int32_t>> expected;
  for (const std::vector<int32_t>& prompt : prompts) {
    absl::StatusOr<std::vector<int32_t>> ids = OfflineRunIds(Stories260KDir(), prompt, max_tokens);
    ASSERT_TRUE(ids.ok()) << ids.status();
    ASSERT_FALSE(ids->empty());
    expected.push_back(*ids);
  }

  StoriesYamlOptions yaml;
  yaml.policy = "dense";
  yaml.max_batch_size = kStreams;
  launcher::LauncherOptions options;
  options.config_path = dir_.Write("deployment.yaml", StoriesYaml(yaml));
  options.log_dir = absl::StrCat(dir_.path(), "/logs");
  LaunchedDeployment d(options);
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();

  std::vector<serving::GenerateRequest> requests;
  for (const std::vector<int32_t>& prompt : prompts) requests.push_back(TokenIdsRequest(prompt, max_tokens));
  const auto results = GenerateConcurrently(d.launcher().endpoints().grpc, requests);
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(results[i].ok()) << "stream " << i << ": " << results[i].status();
    ASSERT_TRUE(results[i]->final.has_value()) << "stream " << i;
    EXPECT_NE(results[i]->final->finish_reason(), serving::FINISH_REASON_ERROR) << results[i]->final->error_message();
    EXPECT_EQ(results[i]->token_ids, expected[i])
        << "stream " << i << " (prompt " << absl::StrJoin(prompts[i], ",") << ") differs from `asyncspade run`";
    EXPECT_EQ(results[i]->final->usage().completion_tokens(), static_cast<int>(results[i]->token_ids.size()));
  }
}

TEST_F(ConcurrentRequestsTest, ThirtyTwoAsyncSpadeStreamsWithTwoSelectorsCompleteWithoutErrors) {
  const int max_tokens = 96;
  StoriesYamlOptions yaml;
  yaml.selectors = 2;
  yaml.policy = "asyncspade";
  yaml.budget = 16;
  yaml.sinks = 4;
  yaml.recent = 16;
  yaml.max_batch_size = kStreams;
  launcher::LauncherOptions options;
  options.config_path = dir_.Write("deployment.yaml", StoriesYaml(yaml));
  options.log_dir = absl::StrCat(dir_.path(), "/logs");
  LaunchedDeployment d(options);
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  absl::StatusOr<control::ListMembersResponse> members = d.client().ListMembers();
  ASSERT_TRUE(members.ok());
  EXPECT_TRUE(members->uncovered_layers().empty());

  std::vector<serving::GenerateRequest> requests;
  for (const std::vector<int32_t>& prompt : DistinctPrompts()) {
    serving::GenerateRequest request = TokenIdsRequest(prompt, max_tokens);
    request.mutable_stop()->set_ignore_eos(true);
    requests.push_back(request);
  }
  const auto results = GenerateConcurrently(d.launcher().endpoints().grpc, requests);
  int64_t sparse_steps = 0;
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(results[i].ok()) << "stream " << i << ": " << results[i].status();
    ASSERT_TRUE(results[i]->final.has_value()) << "stream " << i;
    const serving::GenerateFinal& final = *results[i]->final;
    EXPECT_EQ(final.finish_reason(), serving::FINISH_REASON_LENGTH) << "stream " << i << ": " << final.error_message();
    EXPECT_EQ(results[i]->token_ids.size(), static_cast<size_t>(max_tokens)) << "stream " << i;
    EXPECT_EQ(final.policy(), serving::SPARSE_POLICY_ASYNCSPADE);
    sparse_steps += final.sparse_stats().sparse_layer_steps();
  }
  EXPECT_GT(sparse_steps, 0) << "no stream attended sparsely";
}

}  // namespace
}  // namespace asyncspade::testing
