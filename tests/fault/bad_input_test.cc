// Bad requests fail alone: an invalid token id, an empty prompt, no input at all, an unknown
// policy, a prompt longer than max_seq_len, a negative max_tokens or temperature, and asyncspade
// without selectors are each refused with a clear status while a concurrent good request streams
// on, and its tokens are those it gives when it runs alone.
#include <atomic>

#include "gtest/gtest.h"
#include "tests/integration/test_deployment.h"

namespace asyncspade::testing {
namespace {

struct BadCase {
  std::string name;
  serving::GenerateRequest request;
  absl::StatusCode code;
};

std::vector<BadCase> BadCases() {
  std::vector<BadCase> cases;
  cases.push_back({"invalid token id", TokenIdsRequest({1, 99999}, 4), absl::StatusCode::kInvalidArgument});
  cases.push_back({"negative token id", TokenIdsRequest({1, -5}, 4), absl::StatusCode::kInvalidArgument});
  cases.push_back({"empty prompt", TokenIdsRequest({}, 4), absl::StatusCode::kInvalidArgument});
  serving::GenerateRequest no_input;
  no_input.mutable_stop()->set_max_tokens(4);
  cases.push_back({"no input", no_input, absl::StatusCode::kInvalidArgument});
  serving::GenerateRequest unknown_policy = TokenIdsRequest({1, 403}, 4);
  unknown_policy.mutable_sparse()->set_policy(static_cast<serving::SparsePolicy>(99));
  cases.push_back({"unknown policy", unknown_policy, absl::StatusCode::kInvalidArgument});
  std::vector<int32_t> long_prompt(600, 300);
  long_prompt[0] = 1;
  cases.push_back({"prompt longer than max_seq_len", TokenIdsRequest(long_prompt, 4),
                   absl::StatusCode::kInvalidArgument});
  serving::GenerateRequest negative_tokens = TokenIdsRequest({1, 403}, -1);
  cases.push_back({"negative max_tokens", negative_tokens, absl::StatusCode::kInvalidArgument});
  serving::GenerateRequest negative_temperature = TokenIdsRequest({1, 403}, 4);
  negative_temperature.mutable_sampling()->set_temperature(-1);
  cases.push_back({"negative temperature", negative_temperature, absl::StatusCode::kInvalidArgument});
  serving::GenerateRequest asyncspade = TokenIdsRequest({1, 403}, 4);
  asyncspade.mutable_sparse()->set_policy(serving::SPARSE_POLICY_ASYNCSPADE);
  cases.push_back({"asyncspade without selectors", asyncspade, absl::StatusCode::kFailedPrecondition});
  return cases;
}

TEST(BadInputTest, EachBadRequestFailsAloneWhileAGoodOneStreams) {
  if (const std::string why = WhyNoStoriesDeployment(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  StoriesYamlOptions yaml;
  yaml.policy = "dense";
  launcher::LauncherOptions options;
  options.config_path = dir.Write("deployment.yaml", StoriesYaml(yaml));
  options.log_dir = absl::StrCat(dir.path(), "/logs");
  LaunchedDeployment d(options);
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();

  serving::GenerateRequest good = TokenIdsRequest({1, 403, 407, 261}, 400);
  good.mutable_stop()->set_ignore_eos(true);
  absl::StatusOr<launcher::GenerationOutcome> alone =
      launcher::StreamGenerate(d.client(), good, nullptr, absl::Seconds(60));
  ASSERT_TRUE(alone.ok()) << alone.status();

  // The bad requests go out while the good one streams (from its first chunk on).
  const std::vector<BadCase> cases = BadCases();
  std::vector<absl::StatusOr<launcher::GenerationOutcome>> bad_results(cases.size(), absl::UnknownError("not run"));
  std::atomic<bool> sent{false};
  std::vector<std::thread> bad_threads;
  launcher::ControllerClient client(d.launcher().endpoints().grpc);
  absl::StatusOr<launcher::GenerationOutcome> concurrent = launcher::StreamGenerate(
      client, good,
      [&](const serving::GenerateChunk&) {
        if (sent.exchange(true)) return;
        for (size_t i = 0; i < cases.size(); ++i) {
          bad_threads.emplace_back([&, i] {
            bad_results[i] = launcher::StreamGenerate(client, cases[i].request, nullptr, absl::Seconds(30));
          });
        }
      },
      absl::Seconds(60));
  for (std::thread& t : bad_threads) t.join();

  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_FALSE(bad_results[i].ok()) << cases[i].name << " was accepted";
    EXPECT_EQ(bad_results[i].status().code(), cases[i].code) << cases[i].name << ": " << bad_results[i].status();
    EXPECT_GT(bad_results[i].status().message().size(), 30u)
        << cases[i].name << ": the message does not say what is wrong: " << bad_results[i].status();
  }
  ASSERT_TRUE(concurrent.ok()) << concurrent.status();
  ASSERT_TRUE(concurrent->final.has_value());
  EXPECT_EQ(concurrent->final->finish_reason(), serving::FINISH_REASON_LENGTH) << concurrent->final->error_message();
  EXPECT_EQ(concurrent->token_ids, alone->token_ids) << "the bad requests changed the good one's tokens";

  absl::StatusOr<control::ListMembersResponse> members = d.client().ListMembers();
  ASSERT_TRUE(members.ok());
  EXPECT_TRUE(members->serving());
  EXPECT_EQ(d.launcher().Process("decode-worker-0")->restarts, 0) << "a bad request crashed the decode worker";
}

}  // namespace
}  // namespace asyncspade::testing
