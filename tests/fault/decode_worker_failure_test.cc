// kill -9 of the decode worker while streams are running: each of its streams ends with UNAVAILABLE
// naming the worker, the launcher reports the exit and restarts it (restart: on-failure), and a
// new request succeeds on the new process.
#include <signal.h>

#include <atomic>

#include "gtest/gtest.h"
#include "tests/integration/test_deployment.h"

namespace asyncspade::testing {
namespace {

constexpr int kStreams = 8;
constexpr int kLongTokens = 450;

TEST(DecodeWorkerFailureTest, StreamsEndUnavailableAndTheRestartedWorkerServes) {
  if (const std::string why = WhyNoStoriesDeployment(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  StoriesYamlOptions yaml;
  yaml.policy = "dense";
  launcher::LauncherOptions options;
  options.config_path = dir.Write("deployment.yaml", StoriesYaml(yaml));
  options.log_dir = absl::StrCat(dir.path(), "/logs");
  options.first_restart_backoff = absl::Milliseconds(500);
  LaunchedDeployment d(options);
  ASSERT_TRUE(d.Start().ok()) << d.EventsText();
  // stories260K is fast: the worker may finish every stream before the kill lands. Then the kill
  // found nothing in flight, and the scenario is repeated on the restarted worker.
  constexpr int kAttempts = 3;
  int attempts = 0;
  bool saw_unavailable = false;
  pid_t victim = 0;
  while (!saw_unavailable && attempts < kAttempts) {
    ++attempts;
    victim = d.launcher().Process("decode-worker-0")->pid;
    std::atomic<bool> killed{false};
    std::vector<absl::StatusOr<launcher::GenerationOutcome>> results(kStreams, absl::UnknownError("not run"));
    std::vector<std::thread> threads;
    launcher::ControllerClient client(d.launcher().endpoints().grpc);
    for (int i = 0; i < kStreams; ++i) {
      threads.emplace_back([&, i] {
        serving::GenerateRequest request = TokenIdsRequest({1, 300 + i, 320 + i}, kLongTokens);
        request.mutable_stop()->set_ignore_eos(true);
        results[i] = launcher::StreamGenerate(
            client, request,
            [&](const serving::GenerateChunk&) {
              if (!killed.exchange(true)) kill(victim, SIGKILL);
            },
            absl::Seconds(60));
      });
    }
    for (std::thread& t : threads) t.join();
    ASSERT_TRUE(killed.load());
    for (int i = 0; i < kStreams; ++i) {
      if (results[i].ok()) {
        // A stream may have finished before the kill; it must then be complete.
        ASSERT_TRUE(results[i]->final.has_value());
        EXPECT_EQ(results[i]->token_ids.size(), static_cast<size_t>(kLongTokens)) << "stream " << i;
        continue;
      }
      saw_unavailable = true;
      EXPECT_EQ(results[i].status().code(), absl::StatusCode::kUnavailable)
          << "stream " << i << ": " << results[i].status();
      EXPECT_NE(results[i].status().message().find("decode-worker-0"), std::string::npos) << results[i].status();
    }
    // The launcher reports the exit, restarts the worker, and the controller serves again.
    ASSERT_TRUE(WaitUntil(
        [&] {
          std::optional<launcher::ProcessSnapshot> p = d.launcher().Process("decode-worker-0");
          if (p->restarts != attempts || p->phase != launcher::ProcessSnapshot::Phase::kRunning) return false;
          absl::StatusOr<control::ListMembersResponse> members = d.client().ListMembers();
          if (!members.ok() || !members->serving()) return false;
          const control::Member* m = FindMember(*members, "decode-worker-0");
          return m != nullptr && m->pid() == p->pid && m->state() == control::MEMBER_STATE_READY;
        },
        absl::Seconds(30)))
        << d.EventsText();
    EXPECT_TRUE(d.HasEvent(absl::StrCat("decode-worker-0 (pid ", victim, ") exited unexpectedly: signal 9 (SIGKILL)")))
        << d.EventsText();
  }
  EXPECT_TRUE(saw_unavailable) << "in " << kAttempts << " attempts the worker always finished before it was killed";
  EXPECT_TRUE(d.HasEvent("restarted decode-worker-0")) << d.EventsText();

  absl::StatusOr<launcher::GenerationOutcome> after =
      launcher::StreamGenerate(d.client(), TokenIdsRequest({1, 403, 407}, 16), nullptr, absl::Seconds(60));
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_TRUE(after->final.has_value());
  EXPECT_NE(after->final->finish_reason(), serving::FINISH_REASON_ERROR) << after->final->error_message();
  EXPECT_FALSE(after->token_ids.empty());
}

}  // namespace
}  // namespace asyncspade::testing
