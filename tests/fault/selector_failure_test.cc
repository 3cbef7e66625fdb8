// kill -9 of a KV selector while streams are decoding under asyncspade (stories260K, two selectors):
// every stream still completes (its layers fall back to dense attention, counted), the launcher
// reports the exit and restarts the selector (restart: on-failure), the controller gives its links
// a new epoch, and the new selector process makes the selections for a new request.
#include <signal.h>

#include <atomic>

#include "asyncspade/selector/v1/selector.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/integration/test_deployment.h"

namespace asyncspade::testing {
namespace {

constexpr int kStreams = 8;
constexpr int kLongTokens = 400;
constexpr int kShortTokens = 200;

uint64_t LinkEpoch(const control::ListMembersResponse& members, const std::string& selector) {
  const control::Member* m = FindMember(members, selector);
  return m != nullptr && m->links_size() > 0 ? m->links(0).epoch() : 0;
}

TEST(SelectorFailureTest, StreamsSurviveAKilledSelectorWhichComesBackWithANewEpoch) {
  if (const std::string why = WhyNoStoriesDeployment(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  StoriesYamlOptions yaml;
  yaml.selectors = 2;
  yaml.policy = "asyncspade";
  yaml.budget = 16;
  yaml.sinks = 4;
  yaml.recent = 16;
  yaml.max_batch_size = kStreams;
  launcher::LauncherOptions options;
  options.config_path = dir.Write("deployment.yaml", StoriesYaml(yaml));
  options.log_dir = absl::StrCat(dir.path(), "/logs");
  options.first_restart_backoff = absl::Milliseconds(500);
  LaunchedDeployment d(options);
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();

  // The probe attends sparsely before any failure.
  serving::GenerateRequest probe = TokenIdsRequest({1, 403, 407, 261}, kShortTokens);
  probe.mutable_stop()->set_ignore_eos(true);
  // (stories260K decodes faster than a fresh link delivers its first selections: retry.)
  absl::StatusOr<launcher::GenerationOutcome> baseline;
  ASSERT_TRUE(WaitUntil(
      [&] {
        baseline = launcher::StreamGenerate(d.client(), probe, nullptr, absl::Seconds(60));
        return baseline.ok() && baseline->final.has_value() &&
               baseline->final->sparse_stats().sparse_layer_steps() > 0;
      },
      absl::Seconds(20)))
      << (baseline.ok() ? baseline->final->sparse_stats().DebugString() : baseline.status().ToString());

  absl::StatusOr<control::ListMembersResponse> before = d.client().ListMembers();
  ASSERT_TRUE(before.ok());
  const uint64_t epoch_before = LinkEpoch(*before, "selector-1");
  ASSERT_GT(epoch_before, 0u) << "selector-1 has no link";
  const pid_t victim = d.launcher().Process("selector-1")->pid;

  // Streams; the first chunk to arrive kills selector-1.
  std::atomic<bool> killed{false};
  std::vector<std::atomic<bool>> finished_before_kill(kStreams);
  std::vector<absl::StatusOr<launcher::GenerationOutcome>> results(kStreams, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  launcher::ControllerClient client(d.launcher().endpoints().grpc);
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      serving::GenerateRequest request = TokenIdsRequest({1, 300 + i, 320 + i, 340 + i}, kLongTokens);
      request.mutable_stop()->set_ignore_eos(true);
      results[i] = launcher::StreamGenerate(
          client, request,
          [&](const serving::GenerateChunk&) {
            if (!killed.exchange(true)) kill(victim, SIGKILL);
          },
          absl::Seconds(120));
      if (!killed.load()) finished_before_kill[i] = true;
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(killed.load());

  int64_t fallbacks_after_kill = 0;
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(results[i].ok()) << "stream " << i << " failed when a selector died: " << results[i].status();
    ASSERT_TRUE(results[i]->final.has_value());
    EXPECT_EQ(results[i]->final->finish_reason(), serving::FINISH_REASON_LENGTH)
        << "stream " << i << ": " << results[i]->final->error_message();
    EXPECT_EQ(results[i]->token_ids.size(), static_cast<size_t>(kLongTokens));
    if (!finished_before_kill[i]) fallbacks_after_kill += results[i]->final->sparse_stats().dense_fallbacks();
  }
  EXPECT_GT(fallbacks_after_kill, 0) << "no stream counted a dense fallback after its selector died";

  // The launcher reports the exit and restarts selector-1; its links get a new epoch.
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::optional<launcher::ProcessSnapshot> p = d.launcher().Process("selector-1");
        if (p->restarts != 1 || p->phase != launcher::ProcessSnapshot::Phase::kRunning) return false;
        absl::StatusOr<control::ListMembersResponse> now = d.client().ListMembers();
        if (!now.ok()) return false;
        const control::Member* m = FindMember(*now, "selector-1");
        const control::Member* w = FindMember(*now, "decode-worker-0");
        return m != nullptr && m->pid() == p->pid && m->state() == control::MEMBER_STATE_READY &&
               LinkEpoch(*now, "selector-1") > epoch_before && w != nullptr &&
               w->applied_assignment_version() >= now->assignment_version() &&
               m->applied_assignment_version() >= now->assignment_version();
      },
      absl::Seconds(30)))
      << d.EventsText();
  EXPECT_TRUE(d.HasEvent(absl::StrCat("selector-1 (pid ", victim, ") exited unexpectedly: signal 9 (SIGKILL)")))
      << d.EventsText();

  // Selection resumes on the new process: it answers the probe's selections for its layers.
  absl::StatusOr<control::ListMembersResponse> after = d.client().ListMembers();
  ASSERT_TRUE(after.ok());
  const control::Member* restarted = FindMember(*after, "selector-1");
  ASSERT_NE(restarted, nullptr);
  std::unique_ptr<selector::v1::KvSelectorService::Stub> stats_stub = selector::v1::KvSelectorService::NewStub(
      grpc::CreateChannel(restarted->address(), grpc::InsecureChannelCredentials()));
  auto selections = [&]() -> int64_t {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    selector::v1::SelectorStatsResponse stats;
    grpc::Status status = stats_stub->GetStats(&context, selector::v1::SelectorStatsRequest(), &stats);
    return status.ok() ? stats.selections_total() : -1;
  };
  // The streams still running when it came back may already have been re-attached to it.
  const int64_t selections_before_probe = selections();
  ASSERT_GE(selections_before_probe, 0) << "GetStats failed on the restarted selector-1";
  // The worker connects the new link in the background: probe until the new process selects.
  absl::StatusOr<launcher::GenerationOutcome> resumed;
  int probes = 0;
  const bool selected = WaitUntil(
      [&] {
        ++probes;
        resumed = launcher::StreamGenerate(d.client(), probe, nullptr, absl::Seconds(60));
        return resumed.ok() && selections() > selections_before_probe;
      },
      absl::Seconds(20));
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_TRUE(selected) << "the restarted selector-1 made no selection in " << probes << " probe requests; last: "
                        << resumed->final->sparse_stats().DebugString();
  EXPECT_EQ(resumed->token_ids.size(), static_cast<size_t>(kShortTokens));
}

}  // namespace
}  // namespace asyncspade::testing
