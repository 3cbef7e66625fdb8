#include "services/controller/controller.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "glog/logging.h"
#include "grpc/grpc.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace asyncspade::controller {
namespace {

std::string HostPort(const std::string& host, int port) {
  // IPv6 literals need brackets in a gRPC target.
  if (absl::StrContains(host, ':') && !absl::StartsWith(host, "[")) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Controller>> Controller::Create(ControllerOptions options) {
  absl::StatusOr<ServedModel> model = LoadServedModel(options.deployment);
  if (!model.ok()) {
    return absl::Status(model.status().code(),
                        absl::StrCat("deployment ", options.deployment.source, ": ", model.status().message()));
  }
  return std::unique_ptr<Controller>(new Controller(std::move(options), *std::move(model)));
}

Controller::Controller(ControllerOptions options, ServedModel model)
    : options_(std::move(options)), model_(std::move(model)) {
  const DeploymentConfig& deployment = options_.deployment;
  host_ = options_.host.empty() ? deployment.controller.host : options_.host;

  DeploymentStateOptions state_options;
  state_options.heartbeat_interval = absl::Milliseconds(deployment.lifecycle.heartbeat_interval_ms);
  state_options.heartbeat_timeout = absl::Milliseconds(deployment.lifecycle.heartbeat_timeout_ms);
  state_options.layout.num_layers = model_.config.num_layers;
  state_options.layout.explicit_ranges = deployment.selectors.layers;
  state_options.desired_selectors = deployment.selectors.replicas;
  state_options.default_policy_needs_selectors = deployment.sparse.policy == SparsePolicy::kAsyncSpade;
  state_options.first_counter = static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()));
  const absl::Duration probe_timeout = options_.liveness_probe_timeout;
  state_options.address_answers = [probe_timeout](const std::string& address) {
    return AddressAnswers(address, probe_timeout);
  };
  state_options.metrics = options_.metrics;
  state_options.on_decode_worker_lost = [this](const std::string& member_id, const std::string& reason) {
    router_->WorkerLost(member_id, reason);
  };
  state_ = std::make_unique<DeploymentState>(std::move(state_options));

  DecodeWorkerRouterOptions router_options;
  router_options.state = state_.get();
  router_options.channels = &channels_;
  router_options.model = model_;
  router_options.sparse_defaults = deployment.sparse;
  router_ = std::make_unique<DecodeWorkerRouter>(std::move(router_options));

  control_service_ = std::make_unique<ControlServiceImpl>(state_.get(), router_.get(), model_.name,
                                                          std::string(SparsePolicyName(deployment.sparse.policy)));
  generation_service_ = std::make_unique<GenerationServiceImpl>(router_.get(), options_.metrics);
  pusher_ = std::make_unique<AssignmentPusher>(state_.get(), &channels_, options_.push_timeout);
}

Controller::~Controller() { Shutdown(absl::ZeroDuration()); }

std::string Controller::grpc_endpoint() const { return HostPort(host_, grpc_port_); }

absl::Status Controller::Start() {
  const int port = options_.grpc_port.value_or(options_.deployment.controller.grpc_port);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second controller on the same port would then share it
  // silently instead of failing.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int selected_port = 0;
  builder.AddListeningPort(HostPort(host_, port), grpc::InsecureServerCredentials(), &selected_port);
  builder.RegisterService(control_service_.get());
  builder.RegisterService(generation_service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || selected_port == 0) {
    server_.reset();
    return absl::UnavailableError(absl::StrCat("could not listen for gRPC on ", HostPort(host_, port),
                                               " (controller.grpc_port / --grpc-port): is the port in use or the "
                                               "host not an address of this machine?"));
  }
  grpc_port_ = selected_port;
  SetServing(router_->Serving(), router_->NotServingReason());
  pusher_->Start();
  monitor_ = std::thread([this] { MonitorLoop(); });
  LOG(INFO) << "controller: gRPC on " << grpc_endpoint() << ", model " << model_.name << " ("
            << model_.config.num_layers << " layers), default policy "
            << SparsePolicyName(options_.deployment.sparse.policy) << ", " << options_.deployment.selectors.replicas
            << " selector(s) desired";
  return absl::OkStatus();
}

void Controller::SetServing(bool serving, const std::string& reason) {
  if (serving_.has_value() && *serving_ == serving) return;
  serving_ = serving;
  if (server_ != nullptr) {
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    if (health != nullptr) {
      health->SetServingStatus("", serving);
      health->SetServingStatus(kGenerationServiceName, serving);
    }
  }
  if (serving) {
    LOG(INFO) << "controller: SERVING";
  } else {
    LOG(INFO) << "controller: NOT_SERVING: " << reason;
  }
}

void Controller::MonitorLoop() {
  while (!stop_monitor_.WaitForNotificationWithTimeout(options_.monitor_period)) {
    state_->CheckLiveness(absl::Now());
    const std::string reason = router_->NotServingReason();
    SetServing(reason.empty(), reason);
  }
}

void Controller::Shutdown(absl::Duration drain_timeout) {
  if (shut_down_) return;
  shut_down_ = true;
  router_->StopAccepting("the controller is shutting down; retry the request once it is back");
  if (server_ != nullptr) {
    // Stop the monitor first so that it cannot flip the health status back.
    if (!stop_monitor_.HasBeenNotified()) stop_monitor_.Notify();
    if (monitor_.joinable()) monitor_.join();
    serving_.reset();
    SetServing(false, "shutting down");
    const int in_flight = router_->TotalInFlight();
    if (in_flight > 0) {
      LOG(INFO) << "controller: waiting up to " << absl::FormatDuration(drain_timeout) << " for " << in_flight
                << " request(s) in flight";
      if (!router_->WaitUntilIdle(drain_timeout)) {
        LOG(WARNING) << "controller: " << router_->TotalInFlight()
                     << " request(s) still in flight after the drain timeout; cancelling them";
      }
    }
    control_service_->Stop();
    pusher_->Stop();
    // Streams still running are cancelled after this deadline.
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)));
    server_->Wait();
    LOG(INFO) << "controller: stopped";
  }
  pusher_->Stop();
}

}  // namespace asyncspade::controller
