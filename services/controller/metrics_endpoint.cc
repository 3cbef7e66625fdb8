#include "services/controller/metrics_endpoint.h"

#include "absl/strings/str_cat.h"
#include "httplib.h"

namespace asyncspade::controller {

MetricsEndpoint::MetricsEndpoint(ControllerMetrics* metrics, std::string host, int port)
    : metrics_(metrics), host_(std::move(host)), port_(port), server_(std::make_unique<httplib::Server>()) {}

MetricsEndpoint::~MetricsEndpoint() { Stop(); }

absl::StatusOr<int> MetricsEndpoint::Start() {
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& response) {
    response.set_content(metrics_->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  const int port = port_ == 0 ? server_->bind_to_any_port(host_) : (server_->bind_to_port(host_, port_) ? port_ : -1);
  if (port <= 0) {
    return absl::UnavailableError(absl::StrCat("could not listen for metrics on ", host_, ":", port_,
                                               " (controller.metrics_port / --metrics-port): is the port in use?"));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return port;
}

void MetricsEndpoint::Stop() {
  if (!thread_.joinable()) return;
  server_->stop();
  thread_.join();
}

}  // namespace asyncspade::controller
