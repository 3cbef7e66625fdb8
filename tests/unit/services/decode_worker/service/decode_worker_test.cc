// The decode-worker process in-process (DecodeWorker) under the real controller, over real gRPC on
// loopback, serving stories260K with dense attention: generation through DecodeWorkerService and
// through the controller, continuous batching, bad requests, abort, cancellation, drain.
#include "services/decode_worker/service/decode_worker.h"

#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/services/decode_worker/service/deployment_test_util.h"

namespace asyncspade {
namespace {

using ::testing::HasSubstr;
using testing::RunGenerate;
using testing::StoriesDeployment;
using testing::StoriesDeploymentSettings;
using testing::StreamResult;
using testing::TokenRequest;
using testing::WaitUntil;

class DecodeWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASYNCSPADE_REQUIRE_STORIES();
    golden_ = testing::LoadStoriesGolden();
  }
  void Start(StoriesDeploymentSettings settings = {}) {
    deployment_ = std::make_unique<StoriesDeployment>(settings);
    ASSERT_TRUE(deployment_->Start());
  }
  void TearDown() override { deployment_.reset(); }
  // A pace at which a running stream is still running when the test acts on it.
  static StoriesDeploymentSettings Slow() {
    StoriesDeploymentSettings settings;
    settings.step_delay = absl::Milliseconds(2);
    return settings;
  }

  serving::v1::GenerateRequest TextRequest(const testing::GoldenPrompt& prompt) {
    serving::v1::GenerateRequest request;
    request.set_text(prompt.text);
    request.mutable_stop()->set_max_tokens(static_cast<int>(prompt.continuation_ids.size()));
    return request;
  }

  // Starts `request` on the worker in the background; returns once its first response arrived (the
  // stream is then running: the test can act on it).
  std::future<StreamResult> GenerateInBackground(const serving::v1::GenerateRequest& request) {
    auto started = std::make_shared<std::promise<void>>();
    std::future<void> first_response = started->get_future();
    std::future<StreamResult> stream = std::async(std::launch::async, [this, request, started] {
      bool signalled = false;
      return RunGenerate(deployment_->worker_stub(), request, nullptr, [&](const serving::v1::GenerateResponse&) {
        if (!signalled) {
          signalled = true;
          started->set_value();
        }
      });
    });
    first_response.wait();
    return stream;
  }

  testing::StoriesGolden golden_;
  std::unique_ptr<StoriesDeployment> deployment_;
};

TEST_F(DecodeWorkerTest, ConcurrentDenseGenerationEqualsGoldenGreedy) {
  Start();
  // All prompts at once: they share engine steps and must each produce the golden greedy ids (what
  // `asyncspade run` prints for them, see cmd_run_test).
  std::vector<std::future<StreamResult>> streams;
  for (const testing::GoldenPrompt& prompt : golden_.prompts) {
    streams.push_back(std::async(std::launch::async, [&, request = TextRequest(prompt)] {
      return RunGenerate(deployment_->worker_stub(), request);
    }));
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    const testing::GoldenPrompt& prompt = golden_.prompts[i];
    StreamResult result = streams[i].get();
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    EXPECT_EQ(result.token_ids, prompt.continuation_ids) << prompt.text;
    // The streamed text is the golden text after the prompt.
    ASSERT_EQ(prompt.full_text.compare(0, prompt.text.size(), prompt.text), 0);
    EXPECT_EQ(result.text, prompt.full_text.substr(prompt.text.size())) << prompt.text;
    EXPECT_FALSE(result.request_id.empty());
    ASSERT_TRUE(result.final.has_value());
    const serving::v1::GenerateFinal& final = *result.final;
    EXPECT_EQ(final.finish_reason(), serving::v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(final.usage().prompt_tokens(), static_cast<int>(prompt.ids.size()));
    EXPECT_EQ(final.usage().completion_tokens(), static_cast<int>(prompt.continuation_ids.size()));
    EXPECT_EQ(final.served_by(), "decode-worker-0");
    EXPECT_EQ(final.policy(), serving::v1::SPARSE_POLICY_DENSE);
    EXPECT_GT(final.timings().first_token_seconds(), 0.0);
    EXPECT_GE(final.timings().total_seconds(), final.timings().first_token_seconds());
    EXPECT_GE(final.timings().first_token_seconds(), final.timings().queue_seconds());
    EXPECT_GT(final.timings().decode_seconds(), 0.0);
    EXPECT_NEAR(final.timings().mean_inter_token_seconds(),
                final.timings().decode_seconds() / (prompt.continuation_ids.size() - 1), 1e-9);
  }
  // Every KV block is free again (the load is published right after the step that finished them).
  EngineLoop* loop = deployment_->worker()->engine_loop();
  EXPECT_TRUE(WaitUntil([&] { return loop->active_requests() == 0 && loop->load().kv_cache_usage == 0.0; }));
}

TEST_F(DecodeWorkerTest, GenerationThroughTheControllerEqualsGolden) {
  Start();
  const testing::GoldenPrompt& prompt = golden_.prompts[1];
  // The controller routes only to a READY worker it has heard from.
  ASSERT_TRUE(WaitUntil([&] {
    StreamResult probe = RunGenerate(deployment_->generation_stub(), TokenRequest(prompt.ids, 1));
    return probe.status.ok();
  }));
  StreamResult result = RunGenerate(deployment_->generation_stub(),
                                    TokenRequest(prompt.ids, static_cast<int>(prompt.continuation_ids.size())));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.token_ids, prompt.continuation_ids);
  ASSERT_TRUE(result.final.has_value());
  EXPECT_EQ(result.final->served_by(), "decode-worker-0");
}

TEST_F(DecodeWorkerTest, BadRequestsFailAloneWhileAnotherStreams) {
  Start(Slow());
  const testing::GoldenPrompt& prompt = golden_.prompts[0];
  serving::v1::GenerateRequest good = TokenRequest(prompt.ids, 300);
  good.mutable_stop()->set_ignore_eos(true);
  std::promise<void> first_chunk;
  bool signalled = false;
  auto streaming = std::async(std::launch::async, [&] {
    return RunGenerate(deployment_->worker_stub(), good, nullptr, [&](const serving::v1::GenerateResponse&) {
      if (!signalled) {
        signalled = true;
        first_chunk.set_value();
      }
    });
  });
  first_chunk.get_future().wait();

  struct BadCase {
    std::string name;
    serving::v1::GenerateRequest request;
    grpc::StatusCode code;
    std::string message;
  };
  std::vector<BadCase> cases;
  cases.push_back({"token outside vocabulary", TokenRequest({1, 9999}, 4), grpc::StatusCode::INVALID_ARGUMENT, "9999"});
  cases.push_back({"no input", serving::v1::GenerateRequest(), grpc::StatusCode::INVALID_ARGUMENT, "no input"});
  cases.push_back({"prompt too long", TokenRequest(std::vector<int32_t>(600, 5), 4), grpc::StatusCode::INVALID_ARGUMENT,
                   "512"});
  serving::v1::GenerateRequest too_many = TokenRequest(prompt.ids, 600);
  cases.push_back({"max_tokens too large", too_many, grpc::StatusCode::INVALID_ARGUMENT, "max_tokens"});
  serving::v1::GenerateRequest bad_temperature = TokenRequest(prompt.ids, 4);
  bad_temperature.mutable_sampling()->set_temperature(-1.0f);
  cases.push_back({"negative temperature", bad_temperature, grpc::StatusCode::INVALID_ARGUMENT, "temperature"});
  serving::v1::GenerateRequest chat;
  auto* message = chat.mutable_chat()->add_messages();
  message->set_role("user");
  message->set_content("hi");
  cases.push_back({"chat without a chat template", chat, grpc::StatusCode::FAILED_PRECONDITION, "chat template"});
  serving::v1::GenerateRequest bad_budget = TokenRequest(prompt.ids, 4);
  bad_budget.mutable_sparse()->set_budget(-3);
  cases.push_back({"negative budget", bad_budget, grpc::StatusCode::INVALID_ARGUMENT, "budget"});
  for (const BadCase& bad : cases) {
    StreamResult result = RunGenerate(deployment_->worker_stub(), bad.request);
    EXPECT_EQ(result.status.error_code(), bad.code) << bad.name << ": " << result.status.error_message();
    EXPECT_THAT(result.status.error_message(), HasSubstr(bad.message)) << bad.name;
    EXPECT_EQ(result.chunks, 0) << bad.name << ": nothing is streamed before the error";
    EXPECT_FALSE(result.final.has_value()) << bad.name;
  }

  StreamResult result = streaming.get();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  ASSERT_EQ(result.token_ids.size(), 300u);
  EXPECT_TRUE(std::equal(prompt.continuation_ids.begin(), prompt.continuation_ids.end(), result.token_ids.begin()));
  EXPECT_EQ(result.final->finish_reason(), serving::v1::FINISH_REASON_LENGTH);
}

TEST_F(DecodeWorkerTest, AbortEndsTheStreamWithAbortedFinal) {
  Start(Slow());
  serving::v1::GenerateRequest request = TokenRequest(golden_.prompts[0].ids, 450);
  request.set_request_id("abort-me");
  request.mutable_stop()->set_ignore_eos(true);
  std::future<StreamResult> stream = GenerateInBackground(request);
  grpc::ClientContext context;
  serving::v1::AbortRequest abort;
  abort.set_request_id("abort-me");
  serving::v1::AbortResponse response;
  ASSERT_TRUE(deployment_->worker_stub()->Abort(&context, abort, &response).ok());
  EXPECT_TRUE(response.found());

  StreamResult result = stream.get();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.request_id, "abort-me");
  ASSERT_TRUE(result.final.has_value());
  EXPECT_EQ(result.final->finish_reason(), serving::v1::FINISH_REASON_ABORTED);
  EXPECT_LT(result.final->usage().completion_tokens(), 450);
  EXPECT_EQ(result.final->usage().completion_tokens(), static_cast<int>(result.token_ids.size()));

  grpc::ClientContext again;
  ASSERT_TRUE(deployment_->worker_stub()->Abort(&again, abort, &response).ok());
  EXPECT_FALSE(response.found()) << "a finished request is no longer found";
  EXPECT_TRUE(WaitUntil([&] { return deployment_->worker()->engine_loop()->load().kv_cache_usage == 0.0; }));
}

TEST_F(DecodeWorkerTest, ClientCancellationAbortsTheRequest) {
  Start(Slow());
  serving::v1::GenerateRequest request = TokenRequest(golden_.prompts[0].ids, 450);
  request.mutable_stop()->set_ignore_eos(true);
  grpc::ClientContext context;
  int responses = 0;
  StreamResult result = RunGenerate(deployment_->worker_stub(), request, &context,
                                    [&](const serving::v1::GenerateResponse&) {
                                      if (++responses == 2) context.TryCancel();
                                    });
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_FALSE(result.final.has_value());
  EngineLoop* loop = deployment_->worker()->engine_loop();
  // The worker noticed and freed the request's KV blocks long before its 450 tokens.
  EXPECT_TRUE(WaitUntil([&] { return loop->active_requests() == 0 && loop->load().kv_cache_usage == 0.0; }));
}

TEST_F(DecodeWorkerTest, StopStringEndsBeforeTheMatchAndIsReported) {
  Start();
  const testing::GoldenPrompt& prompt = golden_.prompts[0];  // "... park. They saw a big box with ..."
  serving::v1::GenerateRequest request = TextRequest(prompt);
  request.mutable_stop()->add_stop("box");
  StreamResult result = RunGenerate(deployment_->worker_stub(), request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  ASSERT_TRUE(result.final.has_value());
  EXPECT_EQ(result.final->finish_reason(), serving::v1::FINISH_REASON_STOP_STRING);
  EXPECT_EQ(result.final->matched_stop(), "box");
  const std::string continuation = prompt.full_text.substr(prompt.text.size());
  EXPECT_EQ(result.text, continuation.substr(0, continuation.find("box")));
}

TEST_F(DecodeWorkerTest, SeededSamplingIsReproducibleAndTheSeedIsReported) {
  Start();
  serving::v1::GenerateRequest request = TokenRequest(golden_.prompts[2].ids, 32);
  request.mutable_sampling()->set_temperature(0.9f);
  StreamResult first = RunGenerate(deployment_->worker_stub(), request);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_TRUE(first.final.has_value());
  // The server chose a seed; sending it back reproduces the sample.
  request.mutable_sampling()->set_seed(first.final->seed());
  StreamResult second = RunGenerate(deployment_->worker_stub(), request);
  ASSERT_TRUE(second.status.ok());
  EXPECT_EQ(second.final->seed(), first.final->seed());
  EXPECT_EQ(second.token_ids, first.token_ids);
}

TEST_F(DecodeWorkerTest, DrainFinishesRunningRequestsAndRefusesNewOnes) {
  Start(Slow());
  serving::v1::GenerateRequest request = TokenRequest(golden_.prompts[0].ids, 300);
  request.mutable_stop()->set_ignore_eos(true);
  std::future<StreamResult> stream = GenerateInBackground(request);

  grpc::ClientContext context;
  control::v1::DrainRequest drain;
  drain.set_member_id("decode-worker-0");
  control::v1::DrainResponse drained;
  ASSERT_TRUE(deployment_->control_stub()->Drain(&context, drain, &drained).ok());
  ASSERT_TRUE(WaitUntil([&] { return deployment_->worker()->draining(); }));

  StreamResult refused = RunGenerate(deployment_->worker_stub(), TokenRequest(golden_.prompts[1].ids, 4));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("drain"));

  StreamResult result = stream.get();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.token_ids.size(), 300u) << "the running request finishes normally";

  // The controller sees an idle DRAINING worker.
  EXPECT_TRUE(WaitUntil([&] {
    grpc::ClientContext list_context;
    control::v1::ListMembersResponse members;
    if (!deployment_->control_stub()->ListMembers(&list_context, {}, &members).ok()) return false;
    for (const control::v1::Member& member : members.members()) {
      if (member.member_id() == "decode-worker-0") {
        return member.state() == control::v1::MEMBER_STATE_DRAINING && member.load().running_requests() == 0 &&
               member.load().waiting_requests() == 0;
      }
    }
    return false;
  }));
}

TEST_F(DecodeWorkerTest, RequestsBeyondTheBatchWaitAndReportQueueTime) {
  StoriesDeploymentSettings settings;
  settings.max_batch_size = 1;
  settings.step_delay = absl::Milliseconds(1);
  Start(settings);
  const testing::GoldenPrompt& prompt = golden_.prompts[1];
  serving::v1::GenerateRequest long_request = TokenRequest(prompt.ids, 200);
  long_request.mutable_stop()->set_ignore_eos(true);
  std::future<StreamResult> first = GenerateInBackground(long_request);
  // The batch holds one sequence: this one waits until the first has generated its 200 tokens.
  StreamResult second = RunGenerate(deployment_->worker_stub(), TokenRequest(prompt.ids, 48));
  StreamResult running = first.get();
  ASSERT_TRUE(running.status.ok() && second.status.ok());
  EXPECT_EQ(second.token_ids, prompt.continuation_ids);
  EXPECT_TRUE(std::equal(prompt.continuation_ids.begin(), prompt.continuation_ids.end(), running.token_ids.begin()));
  const serving::v1::Timings& waited = second.final->timings();
  // It arrived after the first token of the other, so it waited for (almost) all of its decode.
  EXPECT_GE(waited.queue_seconds(), 0.5 * running.final->timings().decode_seconds());
  EXPECT_LT(running.final->timings().queue_seconds(), waited.queue_seconds());
  EXPECT_GE(waited.first_token_seconds(), waited.queue_seconds());
}

}  // namespace
}  // namespace asyncspade
