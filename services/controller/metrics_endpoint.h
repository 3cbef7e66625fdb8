// /metrics on a listener of its own, for deployments that set controller.metrics_port (so that
// scraping can be exposed on another interface or firewall rule than the API). Without it, the
// OpenAI HTTP server serves /metrics on the API port.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "services/controller/controller_metrics.h"

namespace httplib {
class Server;
}

namespace asyncspade::controller {

class MetricsEndpoint {
 public:
  // `metrics` must outlive the endpoint. Port 0: any free port.
  MetricsEndpoint(ControllerMetrics* metrics, std::string host, int port);
  ~MetricsEndpoint();

  // Binds and serves on its own thread; returns the bound port.
  absl::StatusOr<int> Start();
  void Stop();

 private:
  ControllerMetrics* const metrics_;
  const std::string host_;
  const int port_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace asyncspade::controller
