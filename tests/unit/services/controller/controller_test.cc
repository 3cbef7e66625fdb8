// The controller end to end over real gRPC on loopback, with in-process fake decode workers and
// selectors (fake_members.h) that register and heartbeat through the real MemberClient.
#include "services/controller/controller.h"

#include <cstdlib>
#include <filesystem>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "asyncspade/control/v1/control.grpc.pb.h"
#include "asyncspade/serving/v1/generation.grpc.pb.h"
#include "common/control/control_plane_store.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "tests/unit/services/controller/fake_members.h"

namespace asyncspade::controller {
namespace {

using control::v1::MEMBER_STATE_READY;
using control::v1::MEMBER_STATE_UNHEALTHY;
using testing::FakeDecodeWorker;
using testing::FakeSelector;
using ::testing::HasSubstr;
using testing::WaitFor;

// Counts what the controller reports, to check the gRPC front end feeds the metrics.
class RecordingMetrics : public ControllerMetrics {
 public:
  void RequestStarted() override { ++started; }
  void RequestFinished(const serving::v1::GenerateFinal& final, double, const std::string& api) override {
    absl::MutexLock lock(&mutex_);
    finished.push_back({final.finish_reason(), api});
  }
  void InterTokenLatency(double seconds) override {
    if (seconds >= 0) ++inter_token;
  }
  void RequestRejected(const std::string& reason) override {
    absl::MutexLock lock(&mutex_);
    rejected.push_back(reason);
  }
  void MemberLoad(const std::string& member_id, control::v1::Role, control::v1::MemberState state,
                  const control::v1::Load&) override {
    absl::MutexLock lock(&mutex_);
    last_state[member_id] = state;
  }
  void MemberGone(const std::string& member_id) override {
    absl::MutexLock lock(&mutex_);
    gone.push_back(member_id);
  }
  std::string Render() const override { return ""; }

  std::vector<std::string> Rejected() {
    absl::MutexLock lock(&mutex_);
    return rejected;
  }
  std::vector<std::pair<serving::v1::FinishReason, std::string>> Finished() {
    absl::MutexLock lock(&mutex_);
    return finished;
  }
  std::optional<control::v1::MemberState> LastState(const std::string& id) {
    absl::MutexLock lock(&mutex_);
    auto it = last_state.find(id);
    if (it == last_state.end()) return std::nullopt;
    return it->second;
  }
  std::vector<std::string> Gone() {
    absl::MutexLock lock(&mutex_);
    return gone;
  }

  std::atomic<int> started{0};
  std::atomic<int> inter_token{0};

 private:
  absl::Mutex mutex_;
  std::vector<std::pair<serving::v1::FinishReason, std::string>> finished;
  std::vector<std::string> rejected;
  std::map<std::string, control::v1::MemberState> last_state;
  std::vector<std::string> gone;
};

std::string TestDeploymentYaml(int selectors, const std::string& policy, const std::string& extra_model = "") {
  return absl::StrCat(R"(
model:
  random_weights: qwen3-0.6b
  max_seq_len: 4096
)",
                      extra_model, R"(
decode_workers:
  replicas: 2
  devices: cpu
  kv_cache:
    page_size: 16
    blocks: 512
selectors:
  replicas: )",
                      selectors, R"(
  devices: cpu
  layers: auto
sparse:
  policy: )",
                      policy, R"(
  budget: 64
  sinks: 4
  recent: 32
lifecycle:
  heartbeat_interval_ms: 50
  heartbeat_timeout_ms: 600
  drain_timeout_s: 5
)");
}

// grpc.health.v1.Health/Check without the generated stubs (not installed by Debian's gRPC):
// HealthCheckRequest is field 1 = service name, HealthCheckResponse field 1 = status
// (1 SERVING, 2 NOT_SERVING).
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::GenericStub stub(channel);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer, &response_buffer,
                 [&done](grpc::Status status) { done.set_value(status); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) return -static_cast<int>(status.error_code());
  std::vector<grpc::Slice> slices;
  if (!response_buffer.Dump(&slices).ok()) return -100;
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.size() >= 2 && bytes[0] == 0x08) return bytes[1];
  return 0;  // UNKNOWN (the default value is not serialized)
}

serving::v1::GenerateRequest TokenRequest(const std::string& request_id = "") {
  serving::v1::GenerateRequest request;
  request.set_request_id(request_id);
  request.mutable_token_ids()->add_ids(1);
  request.mutable_token_ids()->add_ids(2);
  return request;
}

class ControllerTest : public ::testing::Test {
 protected:
  void StartController(int selectors = 2, const std::string& policy = "asyncspade") {
    absl::StatusOr<DeploymentConfig> config =
        ParseDeploymentConfig(TestDeploymentYaml(selectors, policy), "/tmp", "controller_test.yaml");
    ASSERT_TRUE(config.ok()) << config.status();
    ControllerOptions options;
    options.deployment = *config;
    options.host = "127.0.0.1";
    options.grpc_port = 0;
    options.metrics = &metrics_;
    options.monitor_period = absl::Milliseconds(20);
    absl::StatusOr<std::unique_ptr<Controller>> controller = Controller::Create(std::move(options));
    ASSERT_TRUE(controller.ok()) << controller.status();
    controller_ = *std::move(controller);
    ASSERT_TRUE(controller_->Start().ok());
    ASSERT_GT(controller_->grpc_port(), 0);
    channel_ = grpc::CreateChannel(controller_->grpc_endpoint(), grpc::InsecureChannelCredentials());
    generation_ = serving::v1::GenerationService::NewStub(channel_);
    control_ = control::v1::ControlService::NewStub(channel_);
  }

  void TearDown() override {
    // Members first: their servers and heartbeat threads talk to the controller.
    workers_.clear();
    selectors_.clear();
    if (controller_ != nullptr) controller_->Shutdown(absl::ZeroDuration());
  }

  FakeDecodeWorker* AddWorker(const std::string& id, control::v1::MemberState state = MEMBER_STATE_READY) {
    workers_.push_back(std::make_unique<FakeDecodeWorker>(id));
    absl::Status status = workers_.back()->Join(controller_->grpc_endpoint(), state);
    EXPECT_TRUE(status.ok()) << status;
    return workers_.back().get();
  }
  FakeSelector* AddSelector(const std::string& id, control::v1::MemberState state = MEMBER_STATE_READY) {
    selectors_.push_back(std::make_unique<FakeSelector>(id));
    absl::Status status = selectors_.back()->Join(controller_->grpc_endpoint(), state);
    EXPECT_TRUE(status.ok()) << status;
    return selectors_.back().get();
  }

  control::v1::ListMembersResponse List() {
    grpc::ClientContext ctx;
    control::v1::ListMembersResponse response;
    EXPECT_TRUE(control_->ListMembers(&ctx, {}, &response).ok());
    return response;
  }
  std::optional<control::v1::Member> Member(const std::string& id) {
    const control::v1::ListMembersResponse list = List();
    for (const control::v1::Member& m : list.members()) {
      if (m.member_id() == id) return m;
    }
    return std::nullopt;
  }
  bool AllReady(int count) {
    const control::v1::ListMembersResponse list = List();
    int ready = 0;
    for (const auto& m : list.members()) ready += m.state() == MEMBER_STATE_READY;
    return ready == count;
  }

  // Runs a Generate to the end through the gRPC API.
  struct Outcome {
    grpc::Status status;
    std::vector<serving::v1::GenerateResponse> responses;
    std::string served_by() const {
      for (const auto& r : responses) {
        if (r.has_final()) return r.final().served_by();
      }
      return "";
    }
  };
  Outcome Generate(const serving::v1::GenerateRequest& request) {
    Outcome outcome;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto reader = generation_->Generate(&ctx, request);
    serving::v1::GenerateResponse response;
    while (reader->Read(&response)) outcome.responses.push_back(response);
    outcome.status = reader->Finish();
    return outcome;
  }

  RecordingMetrics metrics_;
  std::unique_ptr<Controller> controller_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<serving::v1::GenerationService::Stub> generation_;
  std::unique_ptr<control::v1::ControlService::Stub> control_;
  std::vector<std::unique_ptr<FakeDecodeWorker>> workers_;
  std::vector<std::unique_ptr<FakeSelector>> selectors_;
};

TEST_F(ControllerTest, HealthTurnsServingWhenWorkersAndSelectorsAreReady) {
  StartController(/*selectors=*/2, "asyncspade");
  EXPECT_EQ(HealthStatus(channel_, ""), 2);
  EXPECT_EQ(HealthStatus(channel_, kGenerationServiceName), 2);
  EXPECT_FALSE(controller_->router()->Serving());
  EXPECT_THAT(List().not_serving_reason(), HasSubstr("no decode worker is READY"));

  AddWorker("decode-0");
  AddSelector("selector-0", control::v1::MEMBER_STATE_STARTING);
  ASSERT_TRUE(WaitFor([&] { return AllReady(1); }));
  // The default policy is asyncspade and selector-0 is still starting: no layer is covered.
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(HealthStatus(channel_, ""), 2);
  const control::v1::ListMembersResponse starting = List();
  EXPECT_FALSE(starting.serving());
  EXPECT_THAT(starting.not_serving_reason(), HasSubstr("layer(s) 0-27"));
  ASSERT_EQ(starting.uncovered_layers_size(), 1);

  selectors_[0]->client()->SetState(MEMBER_STATE_READY);
  ASSERT_TRUE(WaitFor([&] { return HealthStatus(channel_, "") == 1; }));
  EXPECT_EQ(HealthStatus(channel_, kGenerationServiceName), 1);
  const control::v1::ListMembersResponse serving = List();
  EXPECT_TRUE(serving.serving());
  EXPECT_EQ(serving.model(), "qwen3-0.6b");
  EXPECT_EQ(serving.default_policy(), "asyncspade");
  EXPECT_EQ(serving.desired_selectors(), 2);
}

TEST_F(ControllerTest, DensePolicyServesWithoutSelectors) {
  StartController(/*selectors=*/0, "dense");
  AddWorker("decode-0");
  ASSERT_TRUE(WaitFor([&] { return HealthStatus(channel_, "") == 1; }));
  const Outcome outcome = Generate(TokenRequest());
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_EQ(outcome.responses.size(), 4u);  // 3 chunks + final
  for (const auto& r : outcome.responses) EXPECT_THAT(r.request_id(), HasSubstr("req-"));
  EXPECT_EQ(outcome.served_by(), "decode-0");
  EXPECT_EQ(outcome.responses.back().final().finish_reason(), serving::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(metrics_.started, 1);
  EXPECT_EQ(metrics_.inter_token, 2);
  ASSERT_EQ(metrics_.Finished().size(), 1u);
  EXPECT_EQ(metrics_.Finished()[0].second, "grpc");
}

TEST_F(ControllerTest, RoutesToTheLeastLoadedWorker) {
  StartController(/*selectors=*/0, "dense");
  FakeDecodeWorker* w0 = AddWorker("decode-0");
  FakeDecodeWorker* w1 = AddWorker("decode-1");
  ASSERT_TRUE(WaitFor([&] { return AllReady(2); }));

  // Heartbeat load: decode-0 reports a queue, so new requests go to decode-1.
  w0->SetReportedLoad(/*running=*/4, /*waiting=*/3);
  ASSERT_TRUE(WaitFor([&] { return Member("decode-0")->load().waiting_requests() == 3; }));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Generate(TokenRequest()).served_by(), "decode-1");

  // The controller's own in-flight count: held requests spread over both idle workers.
  w0->SetReportedLoad(0, 0);
  ASSERT_TRUE(WaitFor([&] { return Member("decode-0")->load().running_requests() == 0; }));
  w0->Hold();
  w1->Hold();
  std::vector<std::unique_ptr<GenerationCall>> calls;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<std::unique_ptr<GenerationCall>> call = controller_->router()->Start(TokenRequest());
    ASSERT_TRUE(call.ok()) << call.status();
    calls.push_back(*std::move(call));
  }
  ASSERT_TRUE(WaitFor([&] { return w0->running() == 2 && w1->running() == 2; }))
      << "decode-0 " << w0->running() << ", decode-1 " << w1->running();
  EXPECT_EQ(controller_->router()->InFlight("decode-0"), 2);
  EXPECT_EQ(controller_->router()->InFlight("decode-1"), 2);
  EXPECT_EQ(Member("decode-0")->in_flight_requests(), 2);
  w0->Release();
  w1->Release();
  for (auto& call : calls) {
    serving::v1::GenerateResponse response;
    while (call->Next(&response)) {
    }
    EXPECT_TRUE(call->Finish().ok()) << call->Finish();
  }
  EXPECT_EQ(controller_->router()->TotalInFlight(), 0);
}

TEST_F(ControllerTest, RejectsBadRequestsWithClearErrors) {
  StartController(/*selectors=*/1, "asyncspade");
  auto code_and_message = [&](const serving::v1::GenerateRequest& request) {
    Outcome outcome = Generate(request);
    EXPECT_TRUE(outcome.responses.empty());
    return std::pair{outcome.status.error_code(), outcome.status.error_message()};
  };
  serving::v1::GenerateRequest dense = TokenRequest();
  dense.mutable_sparse()->set_policy(serving::v1::SPARSE_POLICY_DENSE);

  // No decode worker yet.
  auto [code, message] = code_and_message(dense);
  EXPECT_EQ(code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(message, HasSubstr("no decode worker is READY"));

  AddWorker("decode-0");
  ASSERT_TRUE(WaitFor([&] { return AllReady(1); }));

  serving::v1::GenerateRequest no_input;
  std::tie(code, message) = code_and_message(no_input);
  EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("no input"));

  serving::v1::GenerateRequest empty_ids;
  empty_ids.mutable_token_ids();
  std::tie(code, message) = code_and_message(empty_ids);
  EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("token_ids.ids is empty"));

  serving::v1::GenerateRequest out_of_vocab = TokenRequest();
  out_of_vocab.mutable_token_ids()->add_ids(151936);
  std::tie(code, message) = code_and_message(out_of_vocab);
  EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("token_ids.ids[2] = 151936"));

  serving::v1::GenerateRequest text;
  text.set_text("hello");
  std::tie(code, message) = code_and_message(text);
  EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("without a tokenizer"));

  serving::v1::GenerateRequest unknown_policy = TokenRequest();
  unknown_policy.mutable_sparse()->set_policy(static_cast<serving::v1::SparsePolicy>(42));
  std::tie(code, message) = code_and_message(unknown_policy);
  EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("unknown value 42"));

  serving::v1::GenerateRequest bad_budget = dense;
  bad_budget.mutable_sparse()->set_budget(0);
  std::tie(code, message) = code_and_message(bad_budget);
  EXPECT_EQ(code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("budget"));

  // asyncspade (the default here) while no selector is READY.
  std::tie(code, message) = code_and_message(TokenRequest());
  EXPECT_EQ(code, grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(message, HasSubstr("policy asyncspade needs a READY KV selector"));
  EXPECT_THAT(message, HasSubstr("another sparse policy"));

  // Other policies are served meanwhile.
  EXPECT_TRUE(Generate(dense).status.ok());

  const std::vector<std::string> rejected = metrics_.Rejected();
  EXPECT_EQ(rejected.front(), "unavailable");
  EXPECT_EQ(rejected.back(), "failed_precondition");
  EXPECT_EQ(rejected.size(), 8u);

  AddSelector("selector-0");
  ASSERT_TRUE(WaitFor([&] { return controller_->router()->Serving(); }));
  const Outcome ok = Generate(TokenRequest("my-id"));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.responses.front().request_id(), "my-id");
}

TEST_F(ControllerTest, DuplicateRequestIdInFlightIsRefused) {
  StartController(0, "dense");
  FakeDecodeWorker* w = AddWorker("decode-0");
  ASSERT_TRUE(WaitFor([&] { return AllReady(1); }));
  w->Hold();
  absl::StatusOr<std::unique_ptr<GenerationCall>> first = controller_->router()->Start(TokenRequest("same"));
  ASSERT_TRUE(first.ok());
  absl::StatusOr<std::unique_ptr<GenerationCall>> second = controller_->router()->Start(TokenRequest("same"));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists);
  w->Release();
  serving::v1::GenerateResponse response;
  while ((*first)->Next(&response)) {
  }
  EXPECT_TRUE((*first)->Finish().ok());
}

TEST_F(ControllerTest, AbortEndsTheRequestOnItsWorker) {
  StartController(0, "dense");
  FakeDecodeWorker* w = AddWorker("decode-0");
  ASSERT_TRUE(WaitFor([&] { return AllReady(1); }));
  w->Hold();
  std::future<Outcome> outcome = std::async(std::launch::async, [&] { return Generate(TokenRequest("abort-me")); });
  ASSERT_TRUE(WaitFor([&] { return w->running() == 1; }));

  grpc::ClientContext ctx;
  serving::v1::AbortRequest abort;
  abort.set_request_id("abort-me");
  serving::v1::AbortResponse response;
  ASSERT_TRUE(generation_->Abort(&ctx, abort, &response).ok());
  EXPECT_TRUE(response.found());
  const Outcome done = outcome.get();
  ASSERT_TRUE(done.status.ok()) << done.status.error_message();
  ASSERT_FALSE(done.responses.empty());
  EXPECT_EQ(done.responses.back().final().finish_reason(), serving::v1::FINISH_REASON_ABORTED);

  grpc::ClientContext ctx2;
  abort.set_request_id("not-running");
  ASSERT_TRUE(generation_->Abort(&ctx2, abort, &response).ok());
  EXPECT_FALSE(response.found());
}

TEST_F(ControllerTest, ClientCancellationPropagatesToTheWorker) {
  StartController(0, "dense");
  FakeDecodeWorker* w = AddWorker("decode-0");
  ASSERT_TRUE(WaitFor([&] { return AllReady(1); }));
  w->tokens_per_request = 1000;
  w->token_interval_ms = 5;

  // gRPC client goes away mid-stream.
  {
    grpc::ClientContext ctx;
    auto reader = generation_->Generate(&ctx, TokenRequest("grpc-cancel"));
    serving::v1::GenerateResponse response;
    ASSERT_TRUE(reader->Read(&response));
    ASSERT_TRUE(reader->Read(&response));
    ctx.TryCancel();
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(WaitFor([&] { return w->WasCancelled("grpc-cancel"); }));

  // The HTTP front end's path: GenerationCall::Cancel() from another thread.
  absl::StatusOr<std::unique_ptr<GenerationCall>> call = controller_->router()->Start(TokenRequest("router-cancel"));
  ASSERT_TRUE(call.ok());
  serving::v1::GenerateResponse response;
  ASSERT_TRUE((*call)->Next(&response));
  std::thread canceller([&] { (*call)->Cancel(); });
  while ((*call)->Next(&response)) {
  }
  canceller.join();
  EXPECT_EQ((*call)->Finish().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(WaitFor([&] { return w->WasCancelled("router-cancel"); }));
  EXPECT_TRUE(WaitFor([&] { return controller_->router()->TotalInFlight() == 0; }));
}

TEST_F(ControllerTest, WorkerKilledMidStreamFailsOnlyItsOwnStream) {
  StartController(0, "dense");
  FakeDecodeWorker* w0 = AddWorker("decode-0");
  FakeDecodeWorker* w1 = AddWorker("decode-1");
  ASSERT_TRUE(WaitFor([&] { return AllReady(2); }));
  for (FakeDecodeWorker* w : {w0, w1}) {
    w->tokens_per_request = 40;
    w->token_interval_ms = 10;
  }
  absl::StatusOr<std::unique_ptr<GenerationCall>> a = controller_->router()->Start(TokenRequest("a"));
  absl::StatusOr<std::unique_ptr<GenerationCall>> b = controller_->router()->Start(TokenRequest("b"));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(WaitFor([&] { return w0->running() == 1 && w1->running() == 1; }));
  FakeDecodeWorker* a_worker = w0->received().front().request_id() == "a" ? w0 : w1;
  FakeDecodeWorker* b_worker = a_worker == w0 ? w1 : w0;
  serving::v1::GenerateResponse response;
  ASSERT_TRUE((*a)->Next(&response));
  ASSERT_TRUE((*b)->Next(&response));

  a_worker->Kill();
  while ((*a)->Next(&response)) {
  }
  const absl::Status a_status = (*a)->Finish();
  EXPECT_EQ(a_status.code(), absl::StatusCode::kUnavailable) << a_status;
  EXPECT_THAT(a_status.message(), HasSubstr(a_worker->member_id()));
  EXPECT_THAT(a_status.message(), HasSubstr("request a"));

  int chunks = 1;
  bool final_seen = false;
  while ((*b)->Next(&response)) {
    chunks += response.has_chunk();
    final_seen |= response.has_final();
  }
  EXPECT_TRUE((*b)->Finish().ok()) << (*b)->Finish();
  EXPECT_TRUE(final_seen);
  EXPECT_EQ(chunks, 40);
  EXPECT_EQ(response.final().served_by(), b_worker->member_id());
}

TEST_F(ControllerTest, RequestThatCannotReachItsWorkerIsRetriedOnAnother) {
  StartController(0, "dense");
  FakeDecodeWorker* w0 = AddWorker("decode-0");
  FakeDecodeWorker* w1 = AddWorker("decode-1");
  ASSERT_TRUE(WaitFor([&] { return AllReady(2); }));
  // decode-0 dies but is still READY in the controller's view (its heartbeat timeout has not
  // passed); it looks idle while decode-1 reports load, so it is picked first.
  w1->SetReportedLoad(5, 0);
  ASSERT_TRUE(WaitFor([&] { return Member("decode-1")->load().running_requests() == 5; }));
  w0->Kill();
  const Outcome outcome = Generate(TokenRequest());
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.served_by(), "decode-1");
}

TEST_F(ControllerTest, HeartbeatTimeoutMarksUnhealthyWithdrawsLinksAndEndsItsRequests) {
  StartController(/*selectors=*/2, "asyncspade");
  FakeDecodeWorker* w = AddWorker("decode-0");
  FakeSelector* s0 = AddSelector("selector-0");
  FakeSelector* s1 = AddSelector("selector-1");
  ASSERT_TRUE(WaitFor([&] { return AllReady(3); }));
  ASSERT_TRUE(WaitFor([&] {
    auto a = w->last_assignment();
    return a.has_value() && a->links_size() == 2;
  }));
  const uint64_t two_link_version = w->last_assignment()->version();
  ASSERT_TRUE(WaitFor([&] { return Member("selector-1")->applied_assignment_version() == two_link_version; }));
  EXPECT_EQ(s0->last_assignment()->links_size(), 1);
  EXPECT_EQ(s0->last_assignment()->links(0).layers().last(), 13);

  s1->StopHeartbeats();  // hangs: its server stays up, it just stops talking
  ASSERT_TRUE(WaitFor([&] { return Member("selector-1")->state() == MEMBER_STATE_UNHEALTHY; }));
  EXPECT_TRUE(WaitFor([&] { return metrics_.LastState("selector-1") == MEMBER_STATE_UNHEALTHY; }));
  ASSERT_TRUE(WaitFor([&] {
    auto a = s0->last_assignment();
    return a.has_value() && a->version() > two_link_version && a->links_size() == 1 &&
           a->links(0).layers().last() == 27;
  }));
  ASSERT_TRUE(WaitFor([&] {
    auto a = w->last_assignment();
    return a.has_value() && a->version() > two_link_version && a->links_size() == 1;
  }));
  EXPECT_EQ(w->last_assignment()->links(0).selector_id(), "selector-0");
  EXPECT_TRUE(Member("selector-1")->links().empty());
  EXPECT_TRUE(controller_->router()->Serving()) << "auto layers: selector-0 now serves every layer";

  // A decode worker that goes silent with a request in flight: the request ends UNAVAILABLE.
  w->Hold();
  absl::StatusOr<std::unique_ptr<GenerationCall>> call = controller_->router()->Start(TokenRequest("stuck"));
  ASSERT_TRUE(call.ok()) << call.status();
  ASSERT_TRUE(WaitFor([&] { return w->running() == 1; }));
  w->StopHeartbeats();
  serving::v1::GenerateResponse response;
  while ((*call)->Next(&response)) {
  }
  const absl::Status status = (*call)->Finish();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("decode-0"));
  EXPECT_THAT(status.message(), HasSubstr("no heartbeat"));
  EXPECT_TRUE(WaitFor([&] { return w->WasCancelled("stuck"); }));
  EXPECT_FALSE(controller_->router()->Serving());
}

TEST_F(ControllerTest, RestartedSelectorReplacesItsOldIncarnationWithNewEpochs) {
  StartController(/*selectors=*/1, "asyncspade");
  FakeDecodeWorker* w = AddWorker("decode-0");
  AddSelector("selector-0");
  ASSERT_TRUE(WaitFor([&] { return AllReady(2); }));
  ASSERT_TRUE(WaitFor([&] {
    auto a = w->last_assignment();
    return a.has_value() && a->links_size() == 1;
  }));
  const control::v1::SelectorLink before = w->last_assignment()->links(0);
  const uint64_t old_incarnation = Member("selector-0")->incarnation();

  selectors_[0]->Kill();  // crash: no deregistration, heartbeat timeout not yet passed
  FakeSelector* restarted = AddSelector("selector-0");
  EXPECT_NE(Member("selector-0")->incarnation(), old_incarnation);
  ASSERT_TRUE(WaitFor([&] {
    auto a = w->last_assignment();
    return a.has_value() && a->links_size() == 1 && a->links(0).epoch() != before.epoch();
  }));
  const control::v1::SelectorLink after = w->last_assignment()->links(0);
  EXPECT_EQ(after.channel_id(), "decode-0~selector-0");
  EXPECT_EQ(after.channel_id(), before.channel_id());
  EXPECT_GT(after.epoch(), before.epoch());
  ASSERT_TRUE(WaitFor(
      [&] { return restarted->last_assignment().has_value() && restarted->last_assignment()->links_size() == 1; }));
  EXPECT_EQ(restarted->last_assignment()->links(0).epoch(), after.epoch());
}

TEST_F(ControllerTest, DuplicateLiveMemberIdIsRefused) {
  StartController(1, "asyncspade");
  AddSelector("selector-0");
  FakeSelector second("selector-0");
  const absl::Status status = second.Join(controller_->grpc_endpoint(), MEMBER_STATE_READY);
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists) << status;
  EXPECT_THAT(status.message(), HasSubstr("'selector-0' is already registered"));
  EXPECT_EQ(List().members_size(), 1);
}

TEST_F(ControllerTest, DrainStopsNewRequestsAndReportsTheMemberDrainedWhenIdle) {
  StartController(0, "dense");
  FakeDecodeWorker* w0 = AddWorker("decode-0");
  AddWorker("decode-1");
  ASSERT_TRUE(WaitFor([&] { return AllReady(2); }));

  grpc::ClientContext unknown_ctx;
  control::v1::DrainRequest drain;
  drain.set_member_id("decode-9");
  control::v1::DrainResponse drain_response;
  const grpc::Status unknown = control_->Drain(&unknown_ctx, drain, &drain_response);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(unknown.error_message(), HasSubstr("decode-0, decode-1"));

  grpc::ClientContext ctx;
  drain.set_member_id("decode-0");
  ASSERT_TRUE(control_->Drain(&ctx, drain, &drain_response).ok());
  EXPECT_TRUE(WaitFor([&] { return w0->client()->drain_requested(); })) << "heartbeats carry drain_requested";
  EXPECT_TRUE(WaitFor([&] { return w0->drain_calls() == 1; })) << "the worker's Drain RPC is called";
  EXPECT_EQ(Member("decode-0")->state(), control::v1::MEMBER_STATE_DRAINING);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Generate(TokenRequest()).served_by(), "decode-1");
  ASSERT_TRUE(WaitFor([&] {
    grpc::ClientContext c;
    control::v1::GetDesiredStateResponse desired;
    control_->GetDesiredState(&c, {}, &desired);
    return desired.drained_members_size() == 1 && desired.drained_members(0) == "decode-0";
  }));

  // A clean exit removes it.
  w0->Leave();
  ASSERT_TRUE(WaitFor([&] { return !Member("decode-0").has_value(); }));
  EXPECT_EQ(metrics_.Gone(), std::vector<std::string>{"decode-0"});
}

TEST_F(ControllerTest, ScaleSelectorsSetsTheDesiredCount) {
  StartController(2, "asyncspade");
  grpc::ClientContext ctx;
  control::v1::ScaleSelectorsRequest request;
  request.set_replicas(3);
  control::v1::ScaleSelectorsResponse response;
  ASSERT_TRUE(control_->ScaleSelectors(&ctx, request, &response).ok());
  EXPECT_EQ(response.desired_selectors(), 3);
  grpc::ClientContext ctx2;
  control::v1::GetDesiredStateResponse desired;
  ASSERT_TRUE(control_->GetDesiredState(&ctx2, {}, &desired).ok());
  EXPECT_EQ(desired.desired_selectors(), 3);
  grpc::ClientContext ctx3;
  request.set_replicas(-1);
  EXPECT_EQ(control_->ScaleSelectors(&ctx3, request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Three READY selectors share the layers; the worker is linked to each.
  FakeDecodeWorker* w = AddWorker("decode-0");
  for (int i = 0; i < 3; ++i) AddSelector(absl::StrCat("selector-", i));
  ASSERT_TRUE(WaitFor([&] {
    auto a = w->last_assignment();
    return a.has_value() && a->links_size() == 3;
  }));
  const control::v1::Assignment assignment = *w->last_assignment();
  EXPECT_EQ(assignment.links(0).layers().first(), 0);
  EXPECT_EQ(assignment.links(0).layers().last(), 9);
  EXPECT_EQ(assignment.links(2).layers().last(), 27);
}

TEST_F(ControllerTest, RendezvousStoreSetGetDeleteAndTimeout) {
  StartController(0, "dense");
  ControlPlaneRendezvousStore store(controller_->grpc_endpoint());
  ASSERT_TRUE(store.Set("decode-0~selector-0/7/addr", "127.0.0.1:4242").ok());
  absl::StatusOr<std::string> value = store.Get("decode-0~selector-0/7/addr", absl::Seconds(1));
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ(*value, "127.0.0.1:4242");

  const absl::Time start = absl::Now();
  absl::StatusOr<std::string> missing = store.Get("never-set", absl::Milliseconds(300));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(290));
  EXPECT_THAT(missing.status().message(), HasSubstr("never-set"));

  // A Get waits for a Set that comes later.
  std::future<absl::StatusOr<std::string>> waiting =
      std::async(std::launch::async, [&] { return store.Get("late", absl::Seconds(5)); });
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(store.Set("late", std::string("\0binary\xff", 8)).ok());
  absl::StatusOr<std::string> late = waiting.get();
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_EQ(*late, std::string("\0binary\xff", 8));

  ASSERT_TRUE(store.Delete("late").ok());
  EXPECT_EQ(store.Get("late", absl::Milliseconds(50)).status().code(), absl::StatusCode::kDeadlineExceeded);

  // Direct RPC: the server itself answers DEADLINE_EXCEEDED; an empty key is refused.
  grpc::ClientContext ctx;
  control::v1::StoreGetRequest get;
  get.set_key("absent");
  get.set_timeout_ms(50);
  control::v1::StoreGetResponse response;
  EXPECT_EQ(control_->StoreGet(&ctx, get, &response).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  grpc::ClientContext ctx2;
  get.set_key("");
  EXPECT_EQ(control_->StoreGet(&ctx2, get, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ControllerTest, ShutdownLetsStreamsInFlightFinishAndRefusesNewOnes) {
  StartController(0, "dense");
  FakeDecodeWorker* w = AddWorker("decode-0");
  ASSERT_TRUE(WaitFor([&] { return AllReady(1); }));
  w->Hold();
  std::future<Outcome> in_flight = std::async(std::launch::async, [&] { return Generate(TokenRequest("last")); });
  ASSERT_TRUE(WaitFor([&] { return w->running() == 1; }));
  std::thread shutdown([&] { controller_->Shutdown(absl::Seconds(10)); });
  ASSERT_TRUE(WaitFor([&] { return HealthStatus(channel_, "") == 2; }));
  const absl::StatusOr<std::unique_ptr<GenerationCall>> refused = controller_->router()->Start(TokenRequest());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(refused.status().message(), HasSubstr("shutting down"));
  w->Release();
  const Outcome outcome = in_flight.get();
  EXPECT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.responses.size(), 4u);
  shutdown.join();
}

TEST(ControllerModelInfoTest, ReportsTheCheckpointsConfigAndSparseDefaults) {
  const char* env = std::getenv("ASYNCSPADE_SHARED_DIR");
  const std::filesystem::path shared = env != nullptr ? env : ASYNCSPADE_SHARED_DIR;
  const std::filesystem::path model = shared / "models" / "stories260K";
  if (!std::filesystem::exists(model / "config.json")) {
    GTEST_SKIP() << "no " << (model / "config.json") << "; set ASYNCSPADE_SHARED_DIR to the shared data directory";
  }
  const std::string yaml = absl::StrCat(R"(
model:
  path: )",
                                        model.string(), R"(
  max_seq_len: 256
decode_workers:
  devices: cpu
  kv_cache:
    blocks: 64
selectors:
  replicas: 1
  devices: cpu
sparse:
  policy: quest
  budget: 32
  sinks: 2
  recent: 8
)");
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/tmp", "model_info.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ModelConfig> expected = LoadModelConfig(model.string());
  ASSERT_TRUE(expected.ok()) << expected.status();
  ControllerOptions options;
  options.deployment = *config;
  options.grpc_port = 0;
  absl::StatusOr<std::unique_ptr<Controller>> controller = Controller::Create(options);
  ASSERT_TRUE(controller.ok()) << controller.status();
  ASSERT_TRUE((*controller)->Start().ok());
  auto stub = serving::v1::GenerationService::NewStub(
      grpc::CreateChannel((*controller)->grpc_endpoint(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  serving::v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.name(), "stories260K");
  EXPECT_EQ(info.architecture(), expected->architecture);
  EXPECT_EQ(info.vocab_size(), expected->vocab_size);
  EXPECT_EQ(info.num_layers(), expected->num_layers);
  EXPECT_EQ(info.num_heads(), expected->num_heads);
  EXPECT_EQ(info.num_kv_heads(), expected->num_kv_heads);
  EXPECT_EQ(info.head_dim(), expected->head_dim);
  EXPECT_EQ(info.max_seq_len(), 256);
  EXPECT_EQ(info.eos_token_ids_size(), static_cast<int>(expected->eos_token_ids.size()));
  EXPECT_EQ(info.default_policy(), serving::v1::SPARSE_POLICY_QUEST);
  EXPECT_EQ(info.default_budget(), 32);
  EXPECT_EQ(info.sinks(), 2);
  EXPECT_EQ(info.recent(), 8);
  (*controller)->Shutdown(absl::ZeroDuration());
}

TEST(ControllerCreateTest, MissingModelNamesTheKey) {
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(R"(
model:
  path: /nonexistent/model
decode_workers:
  devices: cpu
  kv_cache:
    blocks: 4096
sparse:
  policy: dense
)",
                                                                  "/tmp", "missing.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  ControllerOptions options;
  options.deployment = *config;
  absl::StatusOr<std::unique_ptr<Controller>> controller = Controller::Create(options);
  ASSERT_FALSE(controller.ok());
  EXPECT_THAT(controller.status().message(), HasSubstr("model.path"));
}

}  // namespace
}  // namespace asyncspade::controller
