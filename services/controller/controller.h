// The controller process minus its front-end plumbing: the deployment state, the gRPC server
// (ControlService, GenerationService, grpc.health.v1), the request router, and the two background
// loops (liveness/health monitor, assignment reconcile). main.cc adds the HTTP server, the ready
// file and signal handling; tests run it in-process.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/config/deployment_config.h"
#include "grpcpp/server.h"
#include "services/controller/assignment_pusher.h"
#include "services/controller/control_service.h"
#include "services/controller/controller_metrics.h"
#include "services/controller/decode_worker_router.h"
#include "services/controller/deployment_state.h"
#include "services/controller/generation_service.h"
#include "services/controller/member_channels.h"
#include "services/controller/served_model.h"

namespace asyncspade::controller {

// The names grpc.health.v1 reports on: the whole server ("") and the generation API.
inline constexpr char kGenerationServiceName[] = "asyncspade.serving.v1.GenerationService";

struct ControllerOptions {
  DeploymentConfig deployment;
  std::string host;                      // empty: deployment.controller.host
  std::optional<int> grpc_port;          // unset: deployment.controller.grpc_port (0 = any free port)
  ControllerMetrics* metrics = nullptr;  // optional, not owned
  absl::Duration monitor_period = absl::Milliseconds(100);
  absl::Duration push_timeout = absl::Seconds(3);
  // How long a registration that reuses a live-looking member's id waits to learn whether the old
  // process still answers.
  absl::Duration liveness_probe_timeout = absl::Seconds(1);
};

class Controller {
 public:
  // Reads the model's configuration (errors name the deployment key) and builds the state.
  static absl::StatusOr<std::unique_ptr<Controller>> Create(ControllerOptions options);
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // Listens and starts the background loops.
  absl::Status Start();
  // Graceful stop: refuses new requests, reports NOT_SERVING, lets in-flight streams finish for up
  // to `drain_timeout`, then stops the server (cancelling what is left).
  void Shutdown(absl::Duration drain_timeout);

  int grpc_port() const { return grpc_port_; }
  // host:port clients and members dial.
  std::string grpc_endpoint() const;
  const std::string& host() const { return host_; }

  DecodeWorkerRouter* router() { return router_.get(); }
  DeploymentState* state() { return state_.get(); }
  const ServedModel& model() const { return model_; }
  const DeploymentConfig& deployment() const { return options_.deployment; }

 private:
  Controller(ControllerOptions options, ServedModel model);
  void MonitorLoop();
  void SetServing(bool serving, const std::string& reason);

  const ControllerOptions options_;
  const ServedModel model_;
  std::string host_;
  int grpc_port_ = 0;

  MemberChannels channels_;
  std::unique_ptr<DeploymentState> state_;
  std::unique_ptr<DecodeWorkerRouter> router_;
  std::unique_ptr<ControlServiceImpl> control_service_;
  std::unique_ptr<GenerationServiceImpl> generation_service_;
  std::unique_ptr<AssignmentPusher> pusher_;
  std::unique_ptr<grpc::Server> server_;

  absl::Notification stop_monitor_;
  std::thread monitor_;
  std::optional<bool> serving_;  // monitor thread only
  bool shut_down_ = false;
};

}  // namespace asyncspade::controller
