// A deployment on loopback inside one test process: the real controller (asyncspade_controller),
// decode workers (DecodeWorker) and KV selectors (KvSelector) over real gRPC and real Gloo
// channels, serving stories260K. Also starts selector processes (the asyncspade-kv-selector
// binary) for tests that kill one.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "asyncspade/control/v1/control.grpc.pb.h"
#include "asyncspade/serving/v1/generation.grpc.pb.h"
#include "common/config/deployment_config.h"
#include "grpcpp/create_channel.h"
#include "services/controller/controller.h"
#include "services/decode_worker/service/decode_worker.h"
#include "services/kv_selector/service/kv_selector.h"
#include "tests/unit/services/decode_worker/stories_test_util.h"

namespace asyncspade::testing {

struct StoriesDeploymentSettings {
  std::string policy = "dense";
  int selectors = 0;
  int budget = 16;
  int sinks = 4;
  int recent = 16;
  int max_batch_size = 8;
  int kv_blocks = 256;
  int max_prefill_tokens = 512;
  bool dense_below_threshold = true;  // DecodeWorkerOptions::sparse_dense_below_threshold
  // Hold the decode loop after each step until every SELECT sent was answered (while all layers
  // have a live selector, at most 2 s): the selectors then always keep up, as they do when a step
  // of a real model takes longer than a selection. Without it, stories260K decodes far faster than
  // a selection round trip and most selections arrive late.
  bool lockstep = false;
  // Sleep after every step: stories260K decodes a token in well under a millisecond, so tests that
  // act on a stream while it runs (abort, cancel, drain) slow it to a larger model's pace.
  absl::Duration step_delay = absl::ZeroDuration();
};

inline std::string StoriesDeploymentYaml(const StoriesDeploymentSettings& s) {
  return absl::StrCat(R"(
model:
  path: )", StoriesDir(), R"(
  max_seq_len: 512
decode_workers:
  replicas: 1
  devices: cpu
  max_batch_size: )", s.max_batch_size, R"(
  max_prefill_tokens: )", s.max_prefill_tokens, R"(
  kv_cache:
    page_size: 16
    blocks: )", s.kv_blocks, R"(
selectors:
  replicas: )", s.selectors, R"(
  devices: cpu
  layers: auto
sparse:
  policy: )", s.policy, R"(
  budget: )", s.budget, R"(
  sinks: )", s.sinks, R"(
  recent: )", s.recent, R"(
lifecycle:
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: 3000
  drain_timeout_s: 5
  startup_timeout_s: 30
)");
}

// Polls `done` until it holds or `timeout` passes.
inline bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(20)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return done();
}

// A child process running one of the build's binaries (<build>/bin/NAME) with its stdout and
// stderr in `log_path`; killed in the destructor if still running.
class ChildProcess {
 public:
  ChildProcess(const std::string& binary_name, const std::vector<std::string>& args, const std::string& log_path)
      : log_path_(log_path) {
    const std::string binary = BinaryDir() + "/" + binary_name;
    std::vector<std::string> argv_storage = {binary};
    argv_storage.insert(argv_storage.end(), args.begin(), args.end());
    pid_ = fork();
    if (pid_ == 0) {
      FILE* log = std::fopen(log_path.c_str(), "w");
      if (log != nullptr) {
        dup2(fileno(log), STDOUT_FILENO);
        dup2(fileno(log), STDERR_FILENO);
      }
      std::vector<char*> argv;
      for (std::string& a : argv_storage) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
  }
  ~ChildProcess() { Kill(SIGKILL); }
  pid_t pid() const { return pid_; }
  // Sends `signal` and reaps the process; returns its wait status.
  int Kill(int signal) {
    if (pid_ <= 0) return -1;
    kill(pid_, signal);
    return Wait();
  }
  // Waits for the process to exit (up to `timeout`, then SIGKILL); returns its wait status.
  int Wait(absl::Duration timeout = absl::Seconds(30)) {
    if (pid_ <= 0) return -1;
    const absl::Time deadline = absl::Now() + timeout;
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (absl::Now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    pid_ = -1;
    return status;
  }
  std::string Log() const {
    std::ifstream in(log_path_);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

 private:
  std::string log_path_;
  pid_t pid_ = -1;
};

// A selector process (the real binary).
class SelectorProcess : public ChildProcess {
 public:
  SelectorProcess(const std::string& config_path, const std::string& controller, const std::string& id)
      : ChildProcess("asyncspade-kv-selector", {"--config", config_path, "--controller", controller, "--id", id},
                     absl::StrCat(::testing::TempDir(), "/", id, "_", getpid(), ".log")) {}
};

// Writes `text` to a file in the test's temp dir and returns its path.
inline std::string WriteTempFile(const std::string& name, const std::string& text) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", getpid(), "_", name);
  std::ofstream(path) << text;
  return path;
}

class StoriesDeployment {
 public:
  explicit StoriesDeployment(StoriesDeploymentSettings settings) : settings_(std::move(settings)) {}
  ~StoriesDeployment() { Stop(); }

  // Starts the controller and, unless `with_worker` is false, one in-process decode worker (READY
  // when this returns OK).
  ::testing::AssertionResult Start(bool with_worker = true) {
    absl::StatusOr<DeploymentConfig> config =
        ParseDeploymentConfig(StoriesDeploymentYaml(settings_), "/tmp", "stories_test.yaml");
    if (!config.ok()) return ::testing::AssertionFailure() << config.status();
    config_ = *config;
    controller::ControllerOptions options;
    options.deployment = config_;
    options.host = "127.0.0.1";
    options.grpc_port = 0;
    options.monitor_period = absl::Milliseconds(20);
    auto controller = controller::Controller::Create(std::move(options));
    if (!controller.ok()) return ::testing::AssertionFailure() << controller.status();
    controller_ = *std::move(controller);
    if (absl::Status s = controller_->Start(); !s.ok()) return ::testing::AssertionFailure() << s;
    auto controller_channel = grpc::CreateChannel(controller_->grpc_endpoint(), grpc::InsecureChannelCredentials());
    generation_stub_ = serving::v1::GenerationService::NewStub(controller_channel);
    control_stub_ = control::v1::ControlService::NewStub(controller_channel);
    if (!with_worker) return ::testing::AssertionSuccess();

    DecodeWorkerOptions worker;
    worker.deployment = config_;
    worker.controller_address = controller_->grpc_endpoint();
    worker.member_id = "decode-worker-0";
    worker.connect_timeout = absl::Seconds(5);
    worker.peer_timeout = absl::Seconds(5);
    worker.sparse_dense_below_threshold = settings_.dense_below_threshold;
    if (settings_.lockstep || settings_.step_delay > absl::ZeroDuration()) {
      worker.after_step_for_tests = [lockstep = settings_.lockstep,
                                     delay = settings_.step_delay](RemoteSelectorPool& pool) {
        absl::SleepFor(delay);
        const absl::Time deadline = absl::Now() + absl::Seconds(2);
        while (lockstep && absl::Now() < deadline) {
          const RemoteSelectorPoolStats stats = pool.stats();
          if (stats.layers_served < stats.layers_total || stats.outstanding_selects <= 0) return;
          absl::SleepFor(absl::Microseconds(100));
        }
      };
    }
    auto created = DecodeWorker::Create(worker);
    if (!created.ok()) return ::testing::AssertionFailure() << created.status();
    worker_ = *std::move(created);
    if (absl::Status s = worker_->Start(); !s.ok()) return ::testing::AssertionFailure() << s;
    auto channel = grpc::CreateChannel(worker_->address(), grpc::InsecureChannelCredentials());
    worker_stub_ = control::v1::DecodeWorkerService::NewStub(channel);
    return ::testing::AssertionSuccess();
  }

  // An in-process selector.
  ::testing::AssertionResult AddSelector(const std::string& id) {
    KvSelectorOptions options;
    options.controller_address = controller_->grpc_endpoint();
    options.member_id = id;
    options.connect_timeout = absl::Seconds(5);
    options.peer_timeout = absl::Seconds(5);
    auto selector = KvSelector::Create(options);
    if (!selector.ok()) return ::testing::AssertionFailure() << selector.status();
    if (absl::Status s = (*selector)->Start(); !s.ok()) return ::testing::AssertionFailure() << s;
    selectors_.push_back(*std::move(selector));
    return ::testing::AssertionSuccess();
  }

  // A selector process; the YAML is written next to the test's temp dir.
  SelectorProcess* AddSelectorProcess(const std::string& id) {
    const std::string path = WriteTempFile("stories.yaml", StoriesDeploymentYaml(settings_));
    processes_.push_back(std::make_unique<SelectorProcess>(path, controller_->grpc_endpoint(), id));
    return processes_.back().get();
  }

  // The controller's view of a member (nullopt when it does not list it).
  std::optional<control::v1::Member> Member(const std::string& id) {
    grpc::ClientContext context;
    control::v1::ListMembersResponse members;
    if (!control_stub_->ListMembers(&context, {}, &members).ok()) return std::nullopt;
    for (const control::v1::Member& member : members.members()) {
      if (member.member_id() == id) return member;
    }
    return std::nullopt;
  }
  bool IsReady(const std::string& id) {
    std::optional<control::v1::Member> member = Member(id);
    return member.has_value() && member->state() == control::v1::MEMBER_STATE_READY;
  }

  // Every layer of the model is served by a live selector link of the worker.
  bool AllLayersServed() {
    RemoteSelectorPool* pool = worker_->selector_pool();
    if (pool == nullptr) return false;
    for (int layer = 0; layer < worker_->model_config().num_layers; ++layer) {
      if (!pool->ServesLayer(layer)) return false;
    }
    return true;
  }

  void Stop() {
    processes_.clear();
    if (worker_ != nullptr) worker_->Shutdown(absl::ZeroDuration());
    for (auto& selector : selectors_) selector->Shutdown();
    if (controller_ != nullptr) controller_->Shutdown(absl::ZeroDuration());
    worker_.reset();
    selectors_.clear();
    controller_.reset();
  }

  DecodeWorker* worker() { return worker_.get(); }
  controller::Controller* controller() { return controller_.get(); }
  std::vector<std::unique_ptr<KvSelector>>& selectors() { return selectors_; }
  control::v1::DecodeWorkerService::Stub* worker_stub() { return worker_stub_.get(); }
  serving::v1::GenerationService::Stub* generation_stub() { return generation_stub_.get(); }
  control::v1::ControlService::Stub* control_stub() { return control_stub_.get(); }
  const DeploymentConfig& config() const { return config_; }

 private:
  StoriesDeploymentSettings settings_;
  DeploymentConfig config_;
  std::unique_ptr<controller::Controller> controller_;
  std::unique_ptr<DecodeWorker> worker_;
  std::vector<std::unique_ptr<KvSelector>> selectors_;
  std::vector<std::unique_ptr<SelectorProcess>> processes_;
  std::unique_ptr<control::v1::DecodeWorkerService::Stub> worker_stub_;
  std::unique_ptr<serving::v1::GenerationService::Stub> generation_stub_;
  std::unique_ptr<control::v1::ControlService::Stub> control_stub_;
};

// The whole stream of one Generate call.
struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> token_ids;
  std::string text;
  int chunks = 0;
  std::optional<serving::v1::GenerateFinal> final;
  std::string request_id;
};

template <typename Stub>
StreamResult RunGenerate(Stub* stub, const serving::v1::GenerateRequest& request,
                         grpc::ClientContext* context = nullptr,
                         const std::function<void(const serving::v1::GenerateResponse&)>& on_response = nullptr) {
  grpc::ClientContext own;
  if (context == nullptr) context = &own;
  StreamResult result;
  auto reader = stub->Generate(context, request);
  serving::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (on_response) on_response(response);
    result.request_id = response.request_id();
    if (response.has_chunk()) {
      ++result.chunks;
      result.token_ids.insert(result.token_ids.end(), response.chunk().token_ids().begin(),
                              response.chunk().token_ids().end());
      result.text += response.chunk().text();
    } else if (response.has_final()) {
      result.final = response.final();
    }
  }
  result.status = reader->Finish();
  return result;
}

inline serving::v1::GenerateRequest TokenRequest(const std::vector<int32_t>& ids, int max_tokens) {
  serving::v1::GenerateRequest request;
  request.mutable_token_ids()->mutable_ids()->Add(ids.begin(), ids.end());
  request.mutable_stop()->set_max_tokens(max_tokens);
  return request;
}

}  // namespace asyncspade::testing
