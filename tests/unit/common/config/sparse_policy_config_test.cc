#include "common/config/sparse_policy_config.h"

#include <cmath>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asyncspade {
namespace {

using ::testing::HasSubstr;

TEST(SparsePolicyTest, NamesRoundTrip) {
  for (SparsePolicy policy :
       {SparsePolicy::kDense, SparsePolicy::kQuest, SparsePolicy::kOracle, SparsePolicy::kAsyncSpade}) {
    absl::StatusOr<SparsePolicy> parsed = ParseSparsePolicy(SparsePolicyName(policy));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, policy);
  }
  EXPECT_EQ(SparsePolicyName(SparsePolicy::kAsyncSpade), "asyncspade");
  EXPECT_EQ(SparsePolicyName(SparsePolicy::kQuest), "quest");
  for (QueryPredictorMode mode :
       {QueryPredictorMode::kRidge, QueryPredictorMode::kLastQuery, QueryPredictorMode::kRidgeShared}) {
    absl::StatusOr<QueryPredictorMode> parsed = ParseQueryPredictorMode(QueryPredictorModeName(mode));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, mode);
  }
  for (ScoreAggregation aggregation : {ScoreAggregation::kSum, ScoreAggregation::kMax, ScoreAggregation::kSoftmaxSum}) {
    absl::StatusOr<ScoreAggregation> parsed = ParseScoreAggregation(ScoreAggregationName(aggregation));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, aggregation);
  }
  for (QueryPredictorRope rope : {QueryPredictorRope::kPost, QueryPredictorRope::kPre}) {
    absl::StatusOr<QueryPredictorRope> parsed = ParseQueryPredictorRope(QueryPredictorRopeName(rope));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, rope);
  }
}

TEST(SparsePolicyTest, UnknownNameSuggestsAndListsTheAccepted) {
  absl::StatusOr<SparsePolicy> parsed = ParseSparsePolicy("Quset");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parsed.status().message(), HasSubstr("'Quset' (did you mean 'quest'?)"));
  EXPECT_THAT(parsed.status().message(), HasSubstr("dense, quest, oracle or asyncspade"));
  // Names are exact: no case folding on the accepted values themselves.
  EXPECT_FALSE(ParseSparsePolicy("Dense").ok());
  EXPECT_FALSE(ParseSparsePolicy("").ok());
  EXPECT_FALSE(ParseQueryPredictorMode("last-query").ok());
}

TEST(SparsePolicyConfigTest, DefaultsAreValid) {
  SparsePolicyConfig config;
  EXPECT_TRUE(config.Validate().ok()) << config.Validate();
  EXPECT_EQ(config.predictor.window, 16);
  EXPECT_EQ(config.predictor.lags, 4);  // docs/quality.md: best top-k recall
  EXPECT_EQ(config.predictor.mode, QueryPredictorMode::kRidgeShared);
  EXPECT_EQ(config.predictor.rope, QueryPredictorRope::kPre);
  EXPECT_EQ(config.aggregation, ScoreAggregation::kSoftmaxSum);
  EXPECT_EQ(config.quest_page_size, 16);
  EXPECT_EQ(config.SparseFromContext(), int64_t{config.sinks} + config.recent + config.budget);
}

struct BrokenField {
  const char* field;
  void (*breaks)(SparsePolicyConfig*);
  const char* says;
};

TEST(SparsePolicyConfigTest, EachViolatedRuleNamesItsField) {
  const BrokenField cases[] = {
      {"budget", [](SparsePolicyConfig* c) { c->budget = 0; }, "got 0"},
      {"budget", [](SparsePolicyConfig* c) { c->budget = -7; }, "got -7"},
      {"sinks", [](SparsePolicyConfig* c) { c->sinks = -1; }, "[0, "},
      {"recent", [](SparsePolicyConfig* c) { c->recent = 0; }, "newest token"},
      {"quest_page_size", [](SparsePolicyConfig* c) { c->quest_page_size = 0; }, "[1, 1024]"},
      {"budget",
       [](SparsePolicyConfig* c) {
         c->policy = SparsePolicy::kQuest;
         c->budget = 8;
       },
       "at least quest_page_size (16)"},
      {"predictor.window", [](SparsePolicyConfig* c) { c->predictor.window = 5000; }, "[2, 1024]"},
      {"predictor.lags", [](SparsePolicyConfig* c) { c->predictor.lags = 0; }, "1 <= lags < window"},
      {"predictor.lags", [](SparsePolicyConfig* c) { c->predictor.lags = 16; }, "1 <= lags < window = 16"},
      {"predictor.ridge_epsilon", [](SparsePolicyConfig* c) { c->predictor.ridge_epsilon = 0; }, "> 0"},
      {"predictor.ridge_epsilon",
       [](SparsePolicyConfig* c) { c->predictor.ridge_epsilon = std::numeric_limits<double>::quiet_NaN(); }, "finite"},
      {"min_context_for_sparse", [](SparsePolicyConfig* c) { c->min_context_for_sparse = 10; },
       "sinks + recent + budget = 2116"},
  };
  for (const BrokenField& c : cases) {
    SparsePolicyConfig config;
    c.breaks(&config);
    std::vector<SparseConfigError> errors = config.Errors();
    ASSERT_EQ(errors.size(), 1u) << c.field;
    EXPECT_EQ(errors[0].field, c.field);
    EXPECT_THAT(errors[0].message, HasSubstr(c.says)) << c.field;
    absl::Status status = config.Validate("sparse.");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(std::string("sparse.") + c.field + ": "));
  }
}

TEST(SparsePolicyConfigTest, QuestBudgetBelowPageIsFineForOtherPolicies) {
  SparsePolicyConfig config;
  config.policy = SparsePolicy::kOracle;
  config.budget = 8;
  EXPECT_TRUE(config.Validate().ok()) << config.Validate();
}

TEST(SparsePolicyConfigTest, MinContextRaisesTheDenseThreshold) {
  SparsePolicyConfig config;
  config.budget = 64;
  config.sinks = 4;
  config.recent = 32;
  EXPECT_EQ(config.SparseFromContext(), 100);
  config.min_context_for_sparse = 1000;
  EXPECT_TRUE(config.Validate().ok());
  EXPECT_EQ(config.SparseFromContext(), 1000);
}

TEST(SparsePolicyOverrideTest, RequestChoosesPolicyAndBudget) {
  SparsePolicyConfig deployment;
  SparsePolicyOverride request;
  request.policy = SparsePolicy::kQuest;
  request.budget = 512;
  absl::StatusOr<SparsePolicyConfig> config = ApplySparsePolicyOverride(deployment, request);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->policy, SparsePolicy::kQuest);
  EXPECT_EQ(config->budget, 512);
  EXPECT_EQ(config->sinks, deployment.sinks);
  EXPECT_EQ(config->predictor.window, deployment.predictor.window);

  absl::StatusOr<SparsePolicyConfig> unchanged = ApplySparsePolicyOverride(deployment, SparsePolicyOverride{});
  ASSERT_TRUE(unchanged.ok());
  EXPECT_EQ(unchanged->budget, deployment.budget);
  EXPECT_EQ(unchanged->policy, deployment.policy);
}

TEST(SparsePolicyOverrideTest, BadRequestBudgetsAreRejected) {
  SparsePolicyConfig deployment;
  SparsePolicyOverride request;
  request.budget = 0;
  absl::Status status = ApplySparsePolicyOverride(deployment, request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("budget"));

  request.budget = int64_t{1} << 40;  // would overflow an int
  EXPECT_FALSE(ApplySparsePolicyOverride(deployment, request).ok());

  request.budget = 4;
  request.policy = SparsePolicy::kQuest;  // below one Quest page
  status = ApplySparsePolicyOverride(deployment, request).status();
  EXPECT_THAT(status.message(), HasSubstr("quest_page_size"));
}

TEST(SparsePolicyOverrideTest, StaleMinContextIsDroppedWhenTheBudgetGrows) {
  SparsePolicyConfig deployment;
  deployment.budget = 64;
  deployment.min_context_for_sparse = 500;
  ASSERT_TRUE(deployment.Validate().ok());

  SparsePolicyOverride small;
  small.budget = 128;
  absl::StatusOr<SparsePolicyConfig> kept = ApplySparsePolicyOverride(deployment, small);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->min_context_for_sparse, 500);

  SparsePolicyOverride large;
  large.budget = 4096;
  absl::StatusOr<SparsePolicyConfig> dropped = ApplySparsePolicyOverride(deployment, large);
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_FALSE(dropped->min_context_for_sparse.has_value());
  EXPECT_EQ(dropped->SparseFromContext(), int64_t{deployment.sinks} + deployment.recent + 4096);
}

}  // namespace
}  // namespace asyncspade
