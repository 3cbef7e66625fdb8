// In-process stand-ins for the controller's members, served over real gRPC on loopback: a decode
// worker that streams scripted tokens and a KV selector that records the links it is given. Each
// registers and heartbeats through the real MemberClient.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "asyncspade/control/v1/control.grpc.pb.h"
#include "asyncspade/selector/v1/selector.grpc.pb.h"
#include "common/control/member_client.h"
#include "glog/logging.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"

namespace asyncspade::controller::testing {

// Waits up to `timeout` for `condition`; true when it held.
template <typename Condition>
bool WaitFor(Condition condition, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return condition();
}

// Shared by both fakes: a gRPC server on 127.0.0.1:<any port> and a MemberClient.
class FakeMemberBase {
 public:
  virtual ~FakeMemberBase() { Kill(); }

  // Registers with the controller and starts heartbeats in `state`.
  absl::Status Join(const std::string& controller_address, control::v1::MemberState state) {
    MemberOptions options;
    options.controller_address = controller_address;
    options.role = role_;
    options.member_id = member_id_;
    options.address = address_;
    options.devices = {"cpu"};
    options.register_timeout = absl::Seconds(5);
    client_ = std::make_unique<MemberClient>(options, [this] {
      control::v1::Load load;
      load.set_running_requests(reported_running_.load());
      load.set_waiting_requests(reported_waiting_.load());
      load.set_attached_sequences(reported_attached_.load());
      return load;
    });
    absl::Status status = client_->Register();
    if (!status.ok()) return status;
    client_->SetState(state);
    client_->StartHeartbeats();
    return absl::OkStatus();
  }

  // Simulates a crash: the server stops (cancelling its calls) and heartbeats stop, without
  // deregistering.
  void Kill() {
    if (client_ != nullptr) client_->Stop(/*deregister=*/false);
    if (server_ != nullptr) {
      server_->Shutdown(std::chrono::system_clock::now());
      server_->Wait();
      server_.reset();
    }
  }
  // Simulates a hang: heartbeats stop but the server keeps its calls open.
  void StopHeartbeats() {
    if (client_ != nullptr) client_->Stop(/*deregister=*/false);
  }
  // A clean exit.
  void Leave() {
    if (client_ != nullptr) client_->Stop(/*deregister=*/true);
  }

  MemberClient* client() { return client_.get(); }
  const std::string& address() const { return address_; }
  const std::string& member_id() const { return member_id_; }
  void SetReportedLoad(int running, int waiting) {
    reported_running_ = running;
    reported_waiting_ = waiting;
  }
  void SetReportedAttached(int attached) { reported_attached_ = attached; }

 protected:
  FakeMemberBase(std::string member_id, control::v1::Role role) : member_id_(std::move(member_id)), role_(role) {}

  void Serve(grpc::Service* service) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service);
    server_ = builder.BuildAndStart();
    CHECK(server_ != nullptr && port != 0) << "fake member could not listen";
    address_ = absl::StrCat("127.0.0.1:", port);
  }

  const std::string member_id_;
  const control::v1::Role role_;
  std::string address_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MemberClient> client_;
  std::atomic<int> reported_running_{0};
  std::atomic<int> reported_waiting_{0};
  std::atomic<int> reported_attached_{0};
};

// Streams `tokens_per_request` chunks (token id = 100 + index), one every `token_interval`, then a
// final message. While `hold` is set, it stops before the first token until released.
class FakeDecodeWorker : public FakeMemberBase, public control::v1::DecodeWorkerService::Service {
 public:
  explicit FakeDecodeWorker(std::string member_id)
      : FakeMemberBase(std::move(member_id), control::v1::ROLE_DECODE_WORKER) {
    Serve(this);
  }
  ~FakeDecodeWorker() override { Kill(); }

  std::atomic<int> tokens_per_request{3};
  std::atomic<int> token_interval_ms{1};
  // Requests wait before their first token until Release().
  void Hold() {
    absl::MutexLock lock(&mutex_);
    hold_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mutex_);
    hold_ = false;
  }

  grpc::Status Generate(grpc::ServerContext* context, const serving::v1::GenerateRequest* request,
                        grpc::ServerWriter<serving::v1::GenerateResponse>* writer) override {
    const std::string id = request->request_id();
    {
      absl::MutexLock lock(&mutex_);
      received_.push_back(*request);
      running_.insert(id);
    }
    auto finish = [&](serving::v1::FinishReason reason) {
      serving::v1::GenerateResponse response;
      response.set_request_id(id);
      response.mutable_final()->set_finish_reason(reason);
      writer->Write(response);
      absl::MutexLock lock(&mutex_);
      running_.erase(id);
      return grpc::Status::OK;
    };
    auto cancelled = [&](const char* why) {
      absl::MutexLock lock(&mutex_);
      cancelled_.insert(id);
      running_.erase(id);
      return grpc::Status(grpc::StatusCode::CANCELLED, why);
    };
    for (int i = 0; i < tokens_per_request.load(); ++i) {
      while (true) {
        {
          absl::MutexLock lock(&mutex_);
          if (aborted_.contains(id)) break;
          if (!hold_) break;
        }
        if (context->IsCancelled()) break;
        absl::SleepFor(absl::Milliseconds(2));
      }
      bool aborted;
      {
        absl::MutexLock lock(&mutex_);
        aborted = aborted_.contains(id);
      }
      if (aborted) return finish(serving::v1::FINISH_REASON_ABORTED);
      if (context->IsCancelled()) return cancelled("cancelled");
      serving::v1::GenerateResponse response;
      response.set_request_id(id);
      response.mutable_chunk()->add_token_ids(100 + i);
      response.mutable_chunk()->set_text(absl::StrCat("t", i));
      if (!writer->Write(response)) return cancelled("client gone");
      absl::SleepFor(absl::Milliseconds(token_interval_ms.load()));
    }
    return finish(serving::v1::FINISH_REASON_LENGTH);
  }

  grpc::Status Abort(grpc::ServerContext*, const serving::v1::AbortRequest* request,
                     serving::v1::AbortResponse* response) override {
    absl::MutexLock lock(&mutex_);
    const bool running = running_.contains(request->request_id());
    if (running) aborted_.insert(request->request_id());
    response->set_found(running);
    return grpc::Status::OK;
  }

  grpc::Status ApplyAssignment(grpc::ServerContext*, const control::v1::ApplyAssignmentRequest* request,
                               control::v1::ApplyAssignmentResponse*) override {
    absl::MutexLock lock(&mutex_);
    assignments_.push_back(request->assignment());
    if (client_ != nullptr) client_->SetAppliedAssignmentVersion(request->assignment().version());
    return grpc::Status::OK;
  }

  grpc::Status Drain(grpc::ServerContext*, const control::v1::DrainRequest*, control::v1::DrainResponse*) override {
    drain_calls_++;
    return grpc::Status::OK;
  }

  std::vector<serving::v1::GenerateRequest> received() {
    absl::MutexLock lock(&mutex_);
    return received_;
  }
  bool WasCancelled(const std::string& id) {
    absl::MutexLock lock(&mutex_);
    return cancelled_.contains(id);
  }
  int running() {
    absl::MutexLock lock(&mutex_);
    return static_cast<int>(running_.size());
  }
  std::optional<control::v1::Assignment> last_assignment() {
    absl::MutexLock lock(&mutex_);
    if (assignments_.empty()) return std::nullopt;
    return assignments_.back();
  }
  int drain_calls() const { return drain_calls_.load(); }

 private:
  absl::Mutex mutex_;
  bool hold_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<serving::v1::GenerateRequest> received_ ABSL_GUARDED_BY(mutex_);
  std::set<std::string> running_ ABSL_GUARDED_BY(mutex_);
  std::set<std::string> aborted_ ABSL_GUARDED_BY(mutex_);
  std::set<std::string> cancelled_ ABSL_GUARDED_BY(mutex_);
  std::vector<control::v1::Assignment> assignments_ ABSL_GUARDED_BY(mutex_);
  std::atomic<int> drain_calls_{0};
};

class FakeSelector : public FakeMemberBase, public selector::v1::KvSelectorService::Service {
 public:
  explicit FakeSelector(std::string member_id) : FakeMemberBase(std::move(member_id), control::v1::ROLE_KV_SELECTOR) {
    Serve(this);
  }
  ~FakeSelector() override { Kill(); }

  grpc::Status ApplyLinks(grpc::ServerContext*, const selector::v1::ApplyLinksRequest* request,
                          selector::v1::ApplyLinksResponse*) override {
    absl::MutexLock lock(&mutex_);
    assignments_.push_back(request->assignment());
    if (client_ != nullptr) client_->SetAppliedAssignmentVersion(request->assignment().version());
    return grpc::Status::OK;
  }
  grpc::Status Drain(grpc::ServerContext*, const control::v1::DrainRequest*, control::v1::DrainResponse*) override {
    drain_calls_++;
    return grpc::Status::OK;
  }

  std::optional<control::v1::Assignment> last_assignment() {
    absl::MutexLock lock(&mutex_);
    if (assignments_.empty()) return std::nullopt;
    return assignments_.back();
  }
  int drain_calls() const { return drain_calls_.load(); }

 private:
  absl::Mutex mutex_;
  std::vector<control::v1::Assignment> assignments_ ABSL_GUARDED_BY(mutex_);
  std::atomic<int> drain_calls_{0};
};

}  // namespace asyncspade::controller::testing
