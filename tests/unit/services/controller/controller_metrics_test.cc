#include "services/controller/controller_metrics.h"

#include <cstdlib>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "gtest/gtest.h"

namespace asyncspade::controller {
namespace {

using control::v1::Load;

bool Contains(const std::string& text, const std::string& line) { return text.find(line) != std::string::npos; }

Load MakeLoad(int running, int waiting, double kv_usage) {
  Load load;
  load.set_running_requests(running);
  load.set_waiting_requests(waiting);
  load.set_kv_cache_usage(kv_usage);
  load.set_kv_blocks_total(1024);
  load.set_selector_lag_steps(1.25);
  load.set_selector_stalls_total(3);
  load.set_dense_fallbacks_total(17);
  return load;
}

serving::v1::GenerateFinal MakeFinal(serving::v1::FinishReason reason, int prompt, int completion) {
  serving::v1::GenerateFinal final;
  final.set_finish_reason(reason);
  final.mutable_usage()->set_prompt_tokens(prompt);
  final.mutable_usage()->set_completion_tokens(completion);
  final.mutable_timings()->set_queue_seconds(0.004);
  final.mutable_timings()->set_first_token_seconds(0.3);
  return final;
}

TEST(ControllerMetricsTest, RequestsByReasonAndLatencies) {
  std::unique_ptr<ControllerMetrics> metrics = CreateControllerMetrics();
  metrics->RequestStarted();
  metrics->RequestStarted();
  metrics->RequestStarted();
  EXPECT_TRUE(Contains(metrics->Render(), "asyncspade_requests_in_flight 3\n"));
  metrics->RequestFinished(MakeFinal(serving::v1::FINISH_REASON_LENGTH, 10, 20), 2.0, "grpc");
  metrics->RequestFinished(MakeFinal(serving::v1::FINISH_REASON_STOP_STRING, 5, 7), 0.7, "http");
  metrics->RequestFinished(MakeFinal(serving::v1::FINISH_REASON_ABORTED, 3, 2), 9.0, "http");
  metrics->InterTokenLatency(0.02);
  metrics->InterTokenLatency(0.2);
  metrics->RequestRejected("unavailable");
  metrics->RequestRejected("unavailable");

  const std::string text = metrics->Render();
  for (const std::string expected : {
           "asyncspade_requests_in_flight 0\n",
           "asyncspade_requests_total{finish_reason=\"aborted\",api=\"http\"} 1\n",
           "asyncspade_requests_total{finish_reason=\"length\",api=\"grpc\"} 1\n",
           "asyncspade_requests_total{finish_reason=\"stop_string\",api=\"http\"} 1\n",
           "asyncspade_requests_rejected_total{reason=\"unavailable\"} 2\n",
           "asyncspade_prompt_tokens_total 18\n",
           "asyncspade_generation_tokens_total 29\n",
           // Only completed requests enter the latency histograms (not the aborted one).
           "asyncspade_e2e_request_latency_seconds_count 2\n",
           "asyncspade_e2e_request_latency_seconds_sum 2.7\n",
           "asyncspade_e2e_request_latency_seconds_bucket{le=\"1\"} 1\n",
           "asyncspade_e2e_request_latency_seconds_bucket{le=\"2.5\"} 2\n",
           "asyncspade_time_to_first_token_seconds_count 2\n",
           "asyncspade_time_to_first_token_seconds_sum 0.6\n",
           "asyncspade_request_queue_time_seconds_count 2\n",
           "asyncspade_inter_token_latency_seconds_count 2\n",
           "asyncspade_inter_token_latency_seconds_bucket{le=\"0.02\"} 1\n",
           "asyncspade_inter_token_latency_seconds_bucket{le=\"0.15\"} 1\n",
           "asyncspade_inter_token_latency_seconds_bucket{le=\"0.2\"} 2\n",
       }) {
    EXPECT_TRUE(Contains(text, expected)) << "missing: " << expected << "in:\n" << text;
  }
}

TEST(ControllerMetricsTest, MembersFromHeartbeats) {
  std::unique_ptr<ControllerMetrics> metrics = CreateControllerMetrics();
  metrics->MemberLoad("decode-0", control::v1::ROLE_DECODE_WORKER, control::v1::MEMBER_STATE_READY,
                      MakeLoad(3, 2, 0.5));
  metrics->MemberLoad("decode-1", control::v1::ROLE_DECODE_WORKER, control::v1::MEMBER_STATE_DRAINING,
                      MakeLoad(1, 0, 0.25));
  Load selector_load;
  selector_load.set_attached_sequences(4);
  metrics->MemberLoad("selector-0", control::v1::ROLE_KV_SELECTOR, control::v1::MEMBER_STATE_READY, selector_load);

  std::string text = metrics->Render();
  for (const std::string expected : {
           "asyncspade_requests_running 4\n",
           "asyncspade_requests_waiting 2\n",
           "asyncspade_member_requests_running{member=\"decode-0\"} 3\n",
           "asyncspade_member_requests_waiting{member=\"decode-0\"} 2\n",
           "asyncspade_kv_cache_usage_ratio{member=\"decode-1\"} 0.25\n",
           "asyncspade_kv_cache_blocks{member=\"decode-0\"} 1024\n",
           "asyncspade_selector_lag_steps{member=\"decode-0\"} 1.25\n",
           "asyncspade_selector_stalls_total{member=\"decode-0\"} 3\n",
           "asyncspade_dense_fallbacks_total{member=\"decode-1\"} 17\n",
           "asyncspade_selector_attached_sequences{member=\"selector-0\"} 4\n",
           "asyncspade_members{role=\"decode_worker\",state=\"ready\"} 1\n",
           "asyncspade_members{role=\"decode_worker\",state=\"draining\"} 1\n",
           "asyncspade_members{role=\"kv_selector\",state=\"ready\"} 1\n",
           "asyncspade_members{role=\"kv_selector\",state=\"unhealthy\"} 0\n",
       }) {
    EXPECT_TRUE(Contains(text, expected)) << "missing: " << expected << "in:\n" << text;
  }
  // Selectors have no KV cache or requests series.
  EXPECT_FALSE(Contains(text, "asyncspade_kv_cache_usage_ratio{member=\"selector-0\"}")) << text;

  // A heartbeat replaces the previous one; a worker restart resets its reported counters.
  Load restarted = MakeLoad(0, 5, 0.0);
  restarted.set_dense_fallbacks_total(1);
  metrics->MemberLoad("decode-0", control::v1::ROLE_DECODE_WORKER, control::v1::MEMBER_STATE_UNHEALTHY, restarted);
  metrics->MemberGone("decode-1");
  text = metrics->Render();
  for (const std::string expected : {
           "asyncspade_requests_running 0\n",
           "asyncspade_requests_waiting 5\n",
           "asyncspade_dense_fallbacks_total{member=\"decode-0\"} 1\n",
           "asyncspade_members{role=\"decode_worker\",state=\"ready\"} 0\n",
           "asyncspade_members{role=\"decode_worker\",state=\"draining\"} 0\n",
           "asyncspade_members{role=\"decode_worker\",state=\"unhealthy\"} 1\n",
       }) {
    EXPECT_TRUE(Contains(text, expected)) << "missing: " << expected << "in:\n" << text;
  }
  EXPECT_FALSE(Contains(text, "decode-1")) << "a gone member's series must disappear:\n" << text;
}

// Every line is a HELP/TYPE comment or a sample `name{labels} value`; every family has both
// comments before its samples.
TEST(ControllerMetricsTest, ExpositionIsWellFormed) {
  std::unique_ptr<ControllerMetrics> metrics = CreateControllerMetrics();
  metrics->MemberLoad("decode \"0\"", control::v1::ROLE_DECODE_WORKER, control::v1::MEMBER_STATE_READY,
                      MakeLoad(1, 1, 0.1));
  metrics->RequestFinished(MakeFinal(serving::v1::FINISH_REASON_STOP, 1, 1), 0.1, "http");
  const std::string text = metrics->Render();
  const std::regex help(R"(# HELP (asyncspade_[a-z0-9_]+) \S.*)");
  const std::regex type(R"(# TYPE (asyncspade_[a-z0-9_]+) (counter|gauge|histogram))");
  const std::regex sample(
      R"re((asyncspade_[a-z0-9_]+)(\{[a-z_]+="([^"\\]|\\.)*"(,[a-z_]+="([^"\\]|\\.)*")*\})? (-?[0-9.e+-]+|\+Inf|NaN))re");
  std::set<std::string> helped, typed;
  std::istringstream lines(text);
  std::string line;
  int samples = 0;
  while (std::getline(lines, line)) {
    std::smatch match;
    if (std::regex_match(line, match, help)) {
      helped.insert(match[1]);
    } else if (std::regex_match(line, match, type)) {
      EXPECT_TRUE(helped.count(match[1])) << "TYPE before HELP: " << line;
      typed.insert(match[1]);
    } else {
      ASSERT_TRUE(std::regex_match(line, match, sample)) << "not a valid sample line: " << line;
      std::string family = match[1];
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        const std::string s = suffix;
        if (!typed.count(family) && family.size() > s.size() &&
            family.compare(family.size() - s.size(), s.size(), s) == 0) {
          family = family.substr(0, family.size() - s.size());
        }
      }
      EXPECT_TRUE(typed.count(family)) << "sample before its TYPE: " << line;
      ++samples;
    }
  }
  EXPECT_GT(samples, 50);
  EXPECT_TRUE(Contains(text, "member=\"decode \\\"0\\\"\"")) << "label values must be escaped";
}

// docs/metrics.md documents every metric the controller exports.
TEST(ControllerMetricsTest, EveryMetricIsDocumented) {
  const char* env = std::getenv("ASYNCSPADE_SOURCE_DIR");
  const std::string path = std::string(env != nullptr ? env : ASYNCSPADE_SOURCE_DIR) + "/docs/metrics.md";
  std::ifstream file(path);
  ASSERT_TRUE(file.good()) << "cannot read " << path;
  std::stringstream docs;
  docs << file.rdbuf();
  const std::string text = CreateControllerMetrics()->Render();
  const std::regex type(R"(# TYPE (asyncspade_[a-z0-9_]+) )");
  int families = 0;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), type); it != std::sregex_iterator(); ++it) {
    const std::string name = (*it)[1];
    EXPECT_TRUE(Contains(docs.str(), "`" + name + "`")) << name << " is not documented in " << path;
    ++families;
  }
  EXPECT_EQ(families, 20);
}

}  // namespace
}  // namespace asyncspade::controller
