#include "common/config/sparse_policy_config.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config/closest_name.h"

namespace asyncspade {
namespace {

// Upper bounds that only catch unit mistakes (a byte count where a token count belongs); real
// contexts are far below them.
constexpr int64_t kMaxTokens = int64_t{1} << 24;
constexpr int kMaxPredictorWindow = 1024;

template <typename Enum>
absl::StatusOr<Enum> ParseName(std::string_view name, const std::vector<std::string>& names, std::string_view what) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (name == names[i]) return static_cast<Enum>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown ", std::string(what), " '", std::string(name), "'",
                                                 DidYouMean(name, names), "; accepted: ", JoinAlternatives(names)));
}

}  // namespace

const std::vector<std::string>& SparsePolicyNames() {
  // Indexed by the enum's value.
  static const std::vector<std::string> names = {"dense", "quest", "oracle", "asyncspade"};
  return names;
}

std::string_view SparsePolicyName(SparsePolicy policy) { return SparsePolicyNames()[static_cast<size_t>(policy)]; }

absl::StatusOr<SparsePolicy> ParseSparsePolicy(std::string_view name) {
  return ParseName<SparsePolicy>(name, SparsePolicyNames(), "sparse policy");
}

const std::vector<std::string>& QueryPredictorModeNames() {
  static const std::vector<std::string> names = {"ridge", "last_query", "ridge_shared"};
  return names;
}

std::string_view QueryPredictorModeName(QueryPredictorMode mode) {
  return QueryPredictorModeNames()[static_cast<size_t>(mode)];
}

absl::StatusOr<QueryPredictorMode> ParseQueryPredictorMode(std::string_view name) {
  return ParseName<QueryPredictorMode>(name, QueryPredictorModeNames(), "query predictor mode");
}

const std::vector<std::string>& ScoreAggregationNames() {
  static const std::vector<std::string> names = {"sum", "max", "softmax_sum"};
  return names;
}

std::string_view ScoreAggregationName(ScoreAggregation aggregation) {
  return ScoreAggregationNames()[static_cast<size_t>(aggregation)];
}

absl::StatusOr<ScoreAggregation> ParseScoreAggregation(std::string_view name) {
  return ParseName<ScoreAggregation>(name, ScoreAggregationNames(), "score aggregation");
}

const std::vector<std::string>& QueryPredictorRopeNames() {
  static const std::vector<std::string> names = {"post", "pre"};
  return names;
}

std::string_view QueryPredictorRopeName(QueryPredictorRope rope) {
  return QueryPredictorRopeNames()[static_cast<size_t>(rope)];
}

absl::StatusOr<QueryPredictorRope> ParseQueryPredictorRope(std::string_view name) {
  return ParseName<QueryPredictorRope>(name, QueryPredictorRopeNames(), "query predictor rope");
}

int64_t SparsePolicyConfig::SparseFromContext() const {
  if (!dense_below_threshold) return 0;
  const int64_t floor = int64_t{sinks} + recent + budget;
  return min_context_for_sparse.has_value() ? std::max<int64_t>(*min_context_for_sparse, floor) : floor;
}

std::vector<SparseConfigError> SparsePolicyConfig::Errors() const {
  std::vector<SparseConfigError> errors;
  auto fail = [&errors](std::string field, std::string message) {
    errors.push_back({std::move(field), std::move(message)});
  };
  if (budget < 1 || budget > kMaxTokens) {
    fail("budget", absl::StrCat("must be a token count in [1, ", kMaxTokens, "] (got ", budget,
                                "); it is how many tokens the policy selects per step"));
  }
  if (sinks < 0 || sinks > kMaxTokens) {
    fail("sinks", absl::StrCat("must be a token count in [0, ", kMaxTokens, "] (got ", sinks, ")"));
  }
  if (recent < 1 || recent > kMaxTokens) {
    fail("recent", absl::StrCat("must be a token count in [1, ", kMaxTokens, "] (got ", recent,
                                "); at least the newest token must always be attended"));
  }
  if (quest_page_size < 1 || quest_page_size > 1024) {
    fail("quest_page_size", absl::StrCat("must be in [1, 1024] tokens (got ", quest_page_size, ")"));
  } else if (policy == SparsePolicy::kQuest && budget >= 1 && budget < quest_page_size) {
    fail("budget", absl::StrCat("must be at least quest_page_size (", quest_page_size,
                                ") with policy quest, which selects whole pages (got ", budget, ")"));
  }
  if (predictor.window < 2 || predictor.window > kMaxPredictorWindow) {
    fail("predictor.window",
         absl::StrCat("must be in [2, ", kMaxPredictorWindow, "] queries (got ", predictor.window, ")"));
  }
  if (predictor.lags < 1 || predictor.lags >= predictor.window) {
    fail("predictor.lags",
         absl::StrCat("must satisfy 1 <= lags < window = ", predictor.window, " (got ", predictor.lags,
                      "); the regression needs more queries in the window than lags"));
  }
  if (!std::isfinite(predictor.ridge_epsilon) || predictor.ridge_epsilon <= 0) {
    fail("predictor.ridge_epsilon",
         absl::StrCat("must be a finite number > 0 (got ", predictor.ridge_epsilon,
                      "); it keeps the lag regression solvable when recent queries are collinear"));
  }
  if (min_context_for_sparse.has_value()) {
    const int64_t floor = int64_t{sinks} + recent + budget;
    if (*min_context_for_sparse < floor) {
      fail("min_context_for_sparse",
           absl::StrCat("must be at least sinks + recent + budget = ", floor, " (got ", *min_context_for_sparse,
                        "); shorter sequences attend densely anyway. Raise it or remove the key"));
    }
  }
  return errors;
}

absl::Status SparsePolicyConfig::Validate(std::string_view field_prefix) const {
  std::vector<SparseConfigError> errors = Errors();
  if (errors.empty()) return absl::OkStatus();
  std::vector<std::string> lines;
  for (const SparseConfigError& error : errors) {
    lines.push_back(absl::StrCat(std::string(field_prefix), error.field, ": ", error.message));
  }
  return absl::InvalidArgumentError(absl::StrJoin(lines, "; "));
}

absl::StatusOr<SparsePolicyConfig> ApplySparsePolicyOverride(const SparsePolicyConfig& deployment_default,
                                                             const SparsePolicyOverride& request) {
  SparsePolicyConfig config = deployment_default;
  if (request.policy.has_value()) config.policy = *request.policy;
  if (request.budget.has_value()) {
    if (*request.budget < 1 || *request.budget > kMaxTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("budget: must be a token count in [1, ", kMaxTokens, "] (got ", *request.budget, ")"));
    }
    config.budget = static_cast<int>(*request.budget);
  }
  if (config.min_context_for_sparse.has_value() &&
      *config.min_context_for_sparse < int64_t{config.sinks} + config.recent + config.budget) {
    config.min_context_for_sparse.reset();
  }
  absl::Status status = config.Validate();
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("sparse override of policy ",
                                                   std::string(SparsePolicyName(config.policy)), " with budget ",
                                                   config.budget, ": ", status.message()));
  }
  return config;
}

}  // namespace asyncspade
