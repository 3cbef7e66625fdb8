#include "tools/launcher/controller_client.h"

#include "gtest/gtest.h"

namespace asyncspade::launcher {
namespace {

TEST(ControllerClientTest, ParsesPolicyNamesCaseInsensitively) {
  EXPECT_EQ(ParseSparsePolicy("dense").value(), serving::SPARSE_POLICY_DENSE);
  EXPECT_EQ(ParseSparsePolicy("Quest").value(), serving::SPARSE_POLICY_QUEST);
  EXPECT_EQ(ParseSparsePolicy("oracle").value(), serving::SPARSE_POLICY_ORACLE);
  EXPECT_EQ(ParseSparsePolicy("ASYNCSPADE").value(), serving::SPARSE_POLICY_ASYNCSPADE);
  absl::StatusOr<serving::SparsePolicy> unknown = ParseSparsePolicy("sparse");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("dense, quest, oracle or asyncspade"), std::string::npos);
  for (serving::SparsePolicy p : {serving::SPARSE_POLICY_DENSE, serving::SPARSE_POLICY_QUEST,
                                  serving::SPARSE_POLICY_ORACLE, serving::SPARSE_POLICY_ASYNCSPADE}) {
    EXPECT_EQ(ParseSparsePolicy(SparsePolicyName(p)).value(), p);
  }
}

TEST(ControllerClientTest, MeanInterTokenLatencyIsFirstToLastTokenOverTheGaps) {
  GenerationOutcome outcome;
  EXPECT_FALSE(outcome.mean_inter_token_seconds().has_value());
  outcome.token_ids = {5, 6, 7, 8, 9};
  // Chunks at 1.0 s (1 token), 1.5 s (2 tokens), 3.0 s (2 tokens): 4 gaps over 2.0 s.
  outcome.chunk_arrivals = {{1.0, 1}, {1.5, 2}, {3.0, 2}};
  ASSERT_TRUE(outcome.mean_inter_token_seconds().has_value());
  EXPECT_DOUBLE_EQ(*outcome.mean_inter_token_seconds(), 0.5);
  EXPECT_DOUBLE_EQ(outcome.first_token_seconds(), 1.0);
}

TEST(ControllerClientTest, AnUnreachableControllerSaysWhatToDo) {
  ControllerClient client("127.0.0.1:1");
  absl::StatusOr<control::ListMembersResponse> members = client.ListMembers(absl::Seconds(5));
  ASSERT_FALSE(members.ok());
  EXPECT_EQ(members.status().code(), absl::StatusCode::kUnavailable);
  const absl::Status explained = ExplainUnreachable(members.status(), client.endpoint());
  EXPECT_NE(explained.message().find("cannot reach the controller at 127.0.0.1:1"), std::string::npos)
      << explained;
  EXPECT_NE(explained.message().find("ASYNCSPADE_ENDPOINT"), std::string::npos) << explained;
  // Other errors pass through unchanged.
  const absl::Status other = absl::InvalidArgumentError("bad");
  EXPECT_EQ(ExplainUnreachable(other, "x"), other);
}

}  // namespace
}  // namespace asyncspade::launcher
