#include "services/controller/decode_worker_router.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "asyncspade/control/v1/control.grpc.pb.h"
#include "common/control/grpc_status.h"
#include "common/status.h"
#include "glog/logging.h"
#include "grpcpp/client_context.h"

namespace asyncspade::controller {
namespace {

using serving::v1::GenerateRequest;
using serving::v1::GenerateResponse;

constexpr absl::Duration kAbortTimeout = absl::Seconds(5);

absl::StatusOr<SparsePolicy> FromProtoPolicy(serving::v1::SparsePolicy policy, SparsePolicy deployment_default) {
  switch (policy) {
    case serving::v1::SPARSE_POLICY_UNSPECIFIED:
      return deployment_default;
    case serving::v1::SPARSE_POLICY_DENSE:
      return SparsePolicy::kDense;
    case serving::v1::SPARSE_POLICY_QUEST:
      return SparsePolicy::kQuest;
    case serving::v1::SPARSE_POLICY_ORACLE:
      return SparsePolicy::kOracle;
    case serving::v1::SPARSE_POLICY_ASYNCSPADE:
      return SparsePolicy::kAsyncSpade;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "sparse.policy: unknown value ", static_cast<int>(policy),
          "; use SPARSE_POLICY_DENSE, SPARSE_POLICY_QUEST, SPARSE_POLICY_ORACLE, SPARSE_POLICY_ASYNCSPADE, or leave it "
          "unset for the deployment default"));
  }
}

}  // namespace

// One request relayed from a decode worker. Next/Finish run on the caller's thread; Cancel and
// MarkWorkerLost may come from any thread.
class RoutedGenerationCall : public GenerationCall {
 public:
  RoutedGenerationCall(DecodeWorkerRouter* router, GenerateRequest request, const grpc::ServerContext* parent,
                       DecodeWorkerRouter::Picked worker)
      : router_(router),
        request_(std::move(request)),
        parent_(parent),
        worker_id_(std::move(worker.member_id)),
        worker_address_(std::move(worker.address)) {}

  ~RoutedGenerationCall() override {
    if (!ended_ && reader_ != nullptr) {
      // Abandoned mid-stream: cancel upstream (the worker aborts the request) and reap the call.
      {
        absl::MutexLock lock(&mutex_);
        cancelled_ = true;
        if (context_ != nullptr) context_->TryCancel();
      }
      GenerateResponse ignored;
      while (reader_->Read(&ignored)) {
      }
      reader_->Finish().IgnoreError();
    }
    router_->Release(this);
  }

  // Sends the request to the current worker.
  void Open() {
    reader_.reset();
    grpc::ClientContext* context = nullptr;
    {
      absl::MutexLock lock(&mutex_);
      context_ = parent_ != nullptr ? grpc::ClientContext::FromServerContext(*parent_)
                                    : std::make_unique<grpc::ClientContext>();
      if (cancelled_) context_->TryCancel();
      context = context_.get();
    }
    auto stub = control::v1::DecodeWorkerService::NewStub(router_->options_.channels->Get(worker_address_));
    reader_ = stub->Generate(context, request_);
  }

  bool Next(GenerateResponse* response) override {
    while (!ended_) {
      if (reader_->Read(response)) {
        got_response_ = true;
        if (response->request_id().empty()) response->set_request_id(request_id());
        if (response->has_final()) {
          got_final_ = true;
          if (response->final().served_by().empty()) response->mutable_final()->set_served_by(worker_id_);
        }
        return true;
      }
      const grpc::Status status = reader_->Finish();
      std::string lost_reason;
      bool cancelled;
      {
        absl::MutexLock lock(&mutex_);
        lost_reason = lost_reason_;
        cancelled = cancelled_ || (parent_ != nullptr && parent_->IsCancelled());
      }
      // Once the final message is delivered the request is complete, whatever the transport says.
      if (got_final_) return End(absl::OkStatus());
      if (cancelled) {
        return End(absl::CancelledError(absl::StrCat("request ", request_id(), " was cancelled by the client")));
      }
      // UNAVAILABLE / CANCELLED that the controller did not ask for: the worker process or its
      // connection failed, which says nothing about the request itself.
      const bool worker_failed = !lost_reason.empty() || status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                                 status.error_code() == grpc::StatusCode::CANCELLED;
      const std::string failure = absl::StrCat(
          "decode worker ", worker_id_, " (", worker_address_, ") ",
          !lost_reason.empty()
              ? absl::StrCat("is lost: ", lost_reason)
              : absl::StrCat("failed: ", status.error_message().empty() ? "(no message)" : status.error_message()));
      if (worker_failed && !got_response_) {
        // Nothing reached the client yet, so the request can start over on another worker.
        failures_.push_back(failure);
        tried_.insert(worker_id_);
        if (router_->Repick(this, tried_).has_value()) {
          LOG(WARNING) << "request " << request_id() << ": " << failure << "; retrying on " << worker_id_;
          Open();
          continue;
        }
        return End(absl::UnavailableError(absl::StrCat("request ", request_id(),
                                                       " could not be served: ", absl::StrJoin(failures_, "; "),
                                                       "; no other decode worker is READY. Retry later")));
      }
      if (worker_failed || (got_response_ && !status.ok())) {
        return End(absl::UnavailableError(absl::StrCat(failure, " while serving request ", request_id(),
                                                       "; the request did not complete, retry it")));
      }
      if (status.ok()) {
        return End(absl::InternalError(absl::StrCat("decode worker ", worker_id_, " ended request ", request_id(),
                                                    "'s stream without a final message")));
      }
      // The worker's verdict on the request itself (e.g. INVALID_ARGUMENT: prompt too long).
      return End(FromGrpcStatus(status));
    }
    return false;
  }

  absl::Status Finish() override {
    if (!ended_) return absl::FailedPreconditionError("Finish() called before Next() returned false");
    return final_status_;
  }

  void Cancel() override {
    absl::MutexLock lock(&mutex_);
    cancelled_ = true;
    if (context_ != nullptr) context_->TryCancel();
  }

  const std::string& request_id() const override { return request_.request_id(); }

  // The router holds its mutex.
  void MarkWorkerLost(const std::string& reason) {
    absl::MutexLock lock(&mutex_);
    lost_reason_ = reason;
    if (context_ != nullptr) context_->TryCancel();
  }
  // The router holds its mutex: the call moves to another worker.
  void ClearWorkerLost() {
    absl::MutexLock lock(&mutex_);
    lost_reason_.clear();
  }

 private:
  friend class DecodeWorkerRouter;

  bool End(absl::Status status) {
    ended_ = true;
    final_status_ = std::move(status);
    router_->Release(this);
    return false;
  }

  DecodeWorkerRouter* const router_;
  const GenerateRequest request_;
  const grpc::ServerContext* const parent_;
  // Written under the router's mutex (Start, Repick) by the call's own thread; read by that thread
  // freely and by the router under its mutex.
  std::string worker_id_;
  std::string worker_address_;
  bool released_ = false;  // guarded by the router's mutex

  std::unique_ptr<grpc::ClientReader<GenerateResponse>> reader_;
  bool ended_ = false;
  bool got_response_ = false;
  bool got_final_ = false;
  absl::Status final_status_;
  std::set<std::string> tried_;
  std::vector<std::string> failures_;

  absl::Mutex mutex_;
  std::unique_ptr<grpc::ClientContext> context_ ABSL_GUARDED_BY(mutex_);
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
  std::string lost_reason_ ABSL_GUARDED_BY(mutex_);
};

DecodeWorkerRouter::DecodeWorkerRouter(DecodeWorkerRouterOptions options)
    : options_(std::move(options)),
      model_info_(MakeModelInfo(options_.model, options_.sparse_defaults)),
      request_id_nonce_(absl::Uniform<uint32_t>(absl::BitGen())) {}

DecodeWorkerRouter::~DecodeWorkerRouter() {
  absl::MutexLock lock(&mutex_);
  CHECK(calls_.empty()) << calls_.size() << " generation call(s) outlive the router";
}

std::string DecodeWorkerRouter::NewRequestId() {
  return absl::StrFormat("req-%08x-%d", request_id_nonce_, ++next_request_number_);
}

absl::Status DecodeWorkerRouter::Validate(const GenerateRequest& request) const {
  const ServedModel& model = options_.model;
  switch (request.input_case()) {
    case GenerateRequest::INPUT_NOT_SET:
      return absl::InvalidArgumentError("the request has no input; set one of text, chat or token_ids");
    case GenerateRequest::kText:
      if (request.text().empty()) return absl::InvalidArgumentError("text is empty; send a non-empty prompt");
      if (!model.has_tokenizer) {
        return absl::InvalidArgumentError(absl::StrCat(
            "this deployment serves ", model.name,
            " without a tokenizer (model.random_weights without model.tokenizer), so it cannot read text; send "
            "token_ids"));
      }
      break;
    case GenerateRequest::kChat:
      if (request.chat().messages().empty()) {
        return absl::InvalidArgumentError("chat.messages is empty; send at least one message");
      }
      if (!model.has_chat_template) {
        return absl::InvalidArgumentError(absl::StrCat("the model ", model.name,
                                                       " has no chat template this server can render; send text "
                                                       "(formatted by you) or token_ids instead of chat"));
      }
      break;
    case GenerateRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return absl::InvalidArgumentError("token_ids.ids is empty; send at least one token id");
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= model.config.vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("token_ids.ids[", i, "] = ", ids[i],
                                                         " is outside the vocabulary of ", model.name, " [0, ",
                                                         model.config.vocab_size, ")"));
        }
      }
      break;
    }
  }

  const serving::v1::SparsePolicyOverride& sparse = request.sparse();
  absl::StatusOr<SparsePolicy> policy = FromProtoPolicy(sparse.policy(), options_.sparse_defaults.policy);
  if (!policy.ok()) return policy.status();
  SparsePolicyConfig base = options_.sparse_defaults;
  if (sparse.has_sinks()) base.sinks = sparse.sinks();
  if (sparse.has_recent()) base.recent = sparse.recent();
  SparsePolicyOverride override_request;
  override_request.policy = *policy;
  if (sparse.has_budget()) override_request.budget = sparse.budget();
  absl::StatusOr<SparsePolicyConfig> effective = ApplySparsePolicyOverride(base, override_request);
  if (!effective.ok()) return Annotate(effective.status(), "sparse");

  if (*policy == SparsePolicy::kAsyncSpade) {
    const std::vector<LayerRange> uncovered = options_.state->UncoveredLayers();
    if (!uncovered.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "policy asyncspade needs a READY KV selector for every layer, but layer(s) ", LayerRangesText(uncovered),
          " of ", model.config.num_layers,
          " have none; wait for the selectors to become READY (`asyncspade ctl status`), scale them up (`asyncspade "
          "ctl scale`), or send the request with another sparse policy (dense, quest or oracle)"));
    }
  }
  return absl::OkStatus();
}

std::string DecodeWorkerRouter::NoWorkerMessage() const {
  const control::v1::ListMembersResponse members = options_.state->ListMembers(nullptr);
  std::vector<std::string> workers;
  for (const control::v1::Member& m : members.members()) {
    if (m.role() == control::v1::ROLE_DECODE_WORKER) {
      workers.push_back(absl::StrCat(m.member_id(), " ", StateName(m.state())));
    }
  }
  return absl::StrCat("no decode worker is READY to take requests (decode workers: ",
                      workers.empty() ? "none registered" : absl::StrJoin(workers, ", "),
                      "); wait until one is READY (`asyncspade ctl status`) and retry");
}

std::optional<DecodeWorkerRouter::Picked> DecodeWorkerRouter::PickWorkerLocked(
    const std::vector<RoutableWorker>& candidates, const std::set<std::string>& exclude) {
  const RoutableWorker* best = nullptr;
  int best_load = std::numeric_limits<int>::max();
  uint64_t best_last_pick = 0;
  for (const RoutableWorker& w : candidates) {
    if (exclude.contains(w.member_id)) continue;
    // The heartbeat is up to one interval old; the controller's own count is exact for the
    // requests it relays. The larger of the two counts requests from either source once.
    auto it = in_flight_.find(w.member_id);
    const int load = std::max(w.reported_requests, it == in_flight_.end() ? 0 : it->second);
    auto pick_it = last_pick_.find(w.member_id);
    const uint64_t last_pick = pick_it == last_pick_.end() ? 0 : pick_it->second;
    // Ties go to the worker picked longest ago, so an idle deployment spreads requests round-robin.
    if (best == nullptr || load < best_load || (load == best_load && last_pick < best_last_pick)) {
      best = &w;
      best_load = load;
      best_last_pick = last_pick;
    }
  }
  if (best == nullptr) return std::nullopt;
  ++in_flight_[best->member_id];
  last_pick_[best->member_id] = ++pick_counter_;
  return Picked{best->member_id, best->address};
}

absl::StatusOr<std::unique_ptr<GenerationCall>> DecodeWorkerRouter::Start(GenerateRequest request) {
  return StartWithParent(std::move(request), nullptr);
}

absl::StatusOr<std::unique_ptr<GenerationCall>> DecodeWorkerRouter::StartWithParent(GenerateRequest request,
                                                                                    const grpc::ServerContext* parent) {
  RETURN_IF_ERROR(Validate(request));
  if (request.request_id().empty()) request.set_request_id(NewRequestId());
  const std::vector<RoutableWorker> candidates = options_.state->RoutableWorkers();
  std::unique_ptr<RoutedGenerationCall> call;
  {
    absl::MutexLock lock(&mutex_);
    if (!accepting_) return absl::UnavailableError(stop_reason_);
    if (calls_.contains(request.request_id())) {
      return absl::AlreadyExistsError(absl::StrCat("request id '", request.request_id(),
                                                   "' is already in flight; use a unique id or leave it empty to "
                                                   "have one assigned"));
    }
    std::optional<Picked> worker = PickWorkerLocked(candidates, {});
    if (worker.has_value()) {
      const std::string request_id = request.request_id();
      call = std::make_unique<RoutedGenerationCall>(this, std::move(request), parent, *std::move(worker));
      calls_[request_id] = call.get();
    }
  }
  if (call == nullptr) return absl::UnavailableError(NoWorkerMessage());
  VLOG(1) << "request " << call->request_id() << " -> " << call->worker_id_;
  call->Open();
  return std::unique_ptr<GenerationCall>(std::move(call));
}

std::optional<DecodeWorkerRouter::Picked> DecodeWorkerRouter::Repick(RoutedGenerationCall* call,
                                                                     const std::set<std::string>& exclude) {
  const std::vector<RoutableWorker> candidates = options_.state->RoutableWorkers();
  absl::MutexLock lock(&mutex_);
  if (!accepting_) return std::nullopt;
  std::optional<Picked> next = PickWorkerLocked(candidates, exclude);
  if (!next.has_value()) return std::nullopt;
  if (--in_flight_[call->worker_id_] <= 0) in_flight_.erase(call->worker_id_);
  call->worker_id_ = next->member_id;
  call->worker_address_ = next->address;
  call->ClearWorkerLost();
  return next;
}

void DecodeWorkerRouter::Release(RoutedGenerationCall* call) {
  absl::MutexLock lock(&mutex_);
  if (call->released_) return;
  call->released_ = true;
  if (--in_flight_[call->worker_id_] <= 0) in_flight_.erase(call->worker_id_);
  auto it = calls_.find(call->request_id());
  if (it != calls_.end() && it->second == call) calls_.erase(it);
}

absl::StatusOr<bool> DecodeWorkerRouter::Abort(const std::string& request_id) {
  std::string worker_id;
  std::string address;
  {
    absl::MutexLock lock(&mutex_);
    auto it = calls_.find(request_id);
    if (it == calls_.end()) return false;
    worker_id = it->second->worker_id_;
    address = it->second->worker_address_;
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + kAbortTimeout));
  serving::v1::AbortRequest request;
  request.set_request_id(request_id);
  serving::v1::AbortResponse response;
  const grpc::Status status =
      control::v1::DecodeWorkerService::NewStub(options_.channels->Get(address))->Abort(&ctx, request, &response);
  if (status.ok()) return response.found();
  // The worker cannot be told: end the relay here, which cancels the upstream call.
  LOG(WARNING) << "request " << request_id << ": Abort on decode worker " << worker_id << " failed ("
               << status.error_message() << "); cancelling the relayed stream";
  absl::MutexLock lock(&mutex_);
  auto it = calls_.find(request_id);
  if (it == calls_.end()) return false;
  it->second->Cancel();
  return true;
}

absl::StatusOr<serving::v1::ModelInfo> DecodeWorkerRouter::GetModelInfo() { return model_info_; }

std::string DecodeWorkerRouter::NotServingReason() const {
  {
    absl::MutexLock lock(&mutex_);
    if (!accepting_) return stop_reason_;
  }
  if (options_.state->RoutableWorkers().empty()) return NoWorkerMessage();
  if (options_.sparse_defaults.policy == SparsePolicy::kAsyncSpade) {
    const std::vector<LayerRange> uncovered = options_.state->UncoveredLayers();
    if (!uncovered.empty()) {
      return absl::StrCat("the default policy asyncspade needs a READY KV selector for every layer, but layer(s) ",
                          LayerRangesText(uncovered), " have none");
    }
  }
  return "";
}

bool DecodeWorkerRouter::Serving() const { return NotServingReason().empty(); }

void DecodeWorkerRouter::WorkerLost(const std::string& member_id, const std::string& reason) {
  absl::MutexLock lock(&mutex_);
  int ended = 0;
  for (auto& [id, call] : calls_) {
    if (call->worker_id_ != member_id) continue;
    call->MarkWorkerLost(reason);
    ++ended;
  }
  if (ended > 0)
    LOG(WARNING) << "decode worker " << member_id << " lost (" << reason << "): ending " << ended << " request(s)";
}

int DecodeWorkerRouter::InFlight(const std::string& member_id) const {
  absl::MutexLock lock(&mutex_);
  auto it = in_flight_.find(member_id);
  return it == in_flight_.end() ? 0 : it->second;
}

int DecodeWorkerRouter::TotalInFlight() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int>(calls_.size());
}

void DecodeWorkerRouter::StopAccepting(const std::string& reason) {
  absl::MutexLock lock(&mutex_);
  accepting_ = false;
  stop_reason_ = reason;
}

bool DecodeWorkerRouter::WaitUntilIdle(absl::Duration timeout) const {
  absl::MutexLock lock(&mutex_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return calls_.empty(); };
  return mutex_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

}  // namespace asyncspade::controller
