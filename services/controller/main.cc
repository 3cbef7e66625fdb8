// asyncspade-controller: the single endpoint of a deployment. Serves the generation API (gRPC and
// OpenAI-compatible HTTP), the control plane its decode workers and KV selectors register with,
// and Prometheus metrics. Started by `asyncspade launch`; see docs/control_plane.md.
#include <pthread.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/config/deployment_config.h"
#include "common/shutdown_signals.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"
#include "services/controller/controller.h"
#include "services/controller/controller_metrics.h"
#include "services/controller/http/openai_http_server.h"
#include "services/controller/metrics_endpoint.h"
#include "tools/cli/args.h"

namespace asyncspade::controller {
namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

const std::vector<cli::FlagSpec>& Flags() {
  static const std::vector<cli::FlagSpec> flags = {
      {"config", true, "deployment YAML (required); see docs/configuration.md"},
      {"host", true, "address to listen on (default: controller.host of the YAML)"},
      {"grpc-port", true, "gRPC port (default: controller.grpc_port; 0 = any free port)"},
      {"http-port", true, "OpenAI-compatible HTTP port (default: controller.http_port; 0 = any free port)"},
      {"metrics-port", true,
       "serve /metrics on its own port (default: controller.metrics_port; unset = /metrics on the HTTP port)"},
      {"ready-file", true,
       "once listening, write {\"grpc\", \"http\", \"metrics\", \"pid\"} as JSON to this file (atomically)"},
      {"help", false, "print this help"},
  };
  return flags;
}

std::string Usage() {
  std::string out = "usage: asyncspade-controller --config FILE.yaml [flags]\n";
  for (const cli::FlagSpec& f : Flags()) {
    absl::StrAppend(&out, "  --", f.name, f.takes_value ? " VALUE" : "", "\n      ", f.help, "\n");
  }
  return out;
}

absl::StatusOr<std::optional<int>> PortFlag(const cli::Args& args, const std::string& name) {
  absl::StatusOr<std::optional<int64_t>> value = args.GetInt(name);
  if (!value.ok()) return value.status();
  if (!value->has_value()) return std::optional<int>();
  if (**value < 0 || **value > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a port in [0, 65535] (got ", **value, ")"));
  }
  return std::optional<int>(static_cast<int>(**value));
}

std::string UrlHost(const std::string& host) {
  return host.find(':') != std::string::npos && host.front() != '[' ? absl::StrCat("[", host, "]") : host;
}

// Written to a temporary name and renamed, so a reader never sees half a file.
absl::Status WriteReadyFile(const std::string& path, const nlohmann::json& content) {
  const std::string temporary = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(temporary, std::ios::trunc);
    if (!out) {
      return absl::UnavailableError(
          absl::StrCat("--ready-file: cannot write '", temporary, "'; does the directory exist and is it writable?"));
    }
    out << content.dump(2) << "\n";
    if (!out.good()) return absl::UnavailableError(absl::StrCat("--ready-file: writing '", temporary, "' failed"));
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::filesystem::remove(temporary, error);
    return absl::UnavailableError(
        absl::StrCat("--ready-file: cannot rename '", temporary, "' to '", path, "': ", error.message()));
  }
  return absl::OkStatus();
}

int Run(int argc, char** argv) {
  absl::StatusOr<cli::Args> args = cli::Args::Parse(argc, argv, 1, Flags());
  if (!args.ok()) {
    std::fprintf(stderr, "asyncspade-controller: %s\n%s", std::string(args.status().message()).c_str(),
                 Usage().c_str());
    return kExitUsage;
  }
  if (args->Has("help")) {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  if (!args->Has("config") || !args->positional().empty()) {
    std::fprintf(stderr, "asyncspade-controller: %s\n%s",
                 args->positional().empty() ? "--config FILE.yaml is required"
                                            : absl::StrCat("unexpected argument '", args->positional()[0], "'").c_str(),
                 Usage().c_str());
    return kExitUsage;
  }
  absl::StatusOr<std::optional<int>> grpc_port = PortFlag(*args, "grpc-port");
  absl::StatusOr<std::optional<int>> http_port = PortFlag(*args, "http-port");
  absl::StatusOr<std::optional<int>> metrics_port = PortFlag(*args, "metrics-port");
  for (const auto* port : {&grpc_port, &http_port, &metrics_port}) {
    if (!port->ok()) {
      std::fprintf(stderr, "asyncspade-controller: %s\n", std::string(port->status().message()).c_str());
      return kExitUsage;
    }
  }

  absl::StatusOr<DeploymentConfig> deployment = LoadDeploymentConfig(*args->Get("config"));
  if (!deployment.ok()) {
    LOG(ERROR) << deployment.status().message();
    return kExitUsage;
  }
  const std::string host = args->GetOr("host", deployment->controller.host);
  const int http_listen_port = http_port->value_or(deployment->controller.http_port);
  std::optional<int> metrics_listen_port =
      metrics_port->has_value() ? *metrics_port : deployment->controller.metrics_port;

  std::unique_ptr<ControllerMetrics> metrics = CreateControllerMetrics();
  ControllerOptions options;
  options.deployment = *deployment;
  options.host = host;
  options.grpc_port = grpc_port->value_or(deployment->controller.grpc_port);
  options.metrics = metrics.get();
  absl::StatusOr<std::unique_ptr<Controller>> controller = Controller::Create(std::move(options));
  if (!controller.ok()) {
    LOG(ERROR) << controller.status().message();
    return kExitUsage;
  }
  if (absl::Status started = (*controller)->Start(); !started.ok()) {
    LOG(ERROR) << started.message();
    return kExitFailure;
  }

  http::OpenAiServerOptions http_options;
  http_options.host = host;
  http_options.port = http_listen_port;
  http_options.model_name = (*controller)->model().name;
  auto http_server = std::make_unique<http::OpenAiHttpServer>((*controller)->router(), metrics.get(), http_options);
  absl::StatusOr<int> bound_http = http_server->Start();
  if (!bound_http.ok()) {
    LOG(ERROR) << bound_http.status().message() << " (controller.http_port / --http-port)";
    (*controller)->Shutdown(absl::ZeroDuration());
    return kExitFailure;
  }
  const std::string http_url = absl::StrCat("http://", UrlHost(host), ":", *bound_http);
  std::string metrics_url = absl::StrCat(http_url, "/metrics");
  std::unique_ptr<MetricsEndpoint> metrics_endpoint;
  if (metrics_listen_port.has_value()) {
    metrics_endpoint = std::make_unique<MetricsEndpoint>(metrics.get(), host, *metrics_listen_port);
    absl::StatusOr<int> bound_metrics = metrics_endpoint->Start();
    if (!bound_metrics.ok()) {
      LOG(ERROR) << bound_metrics.status().message();
      http_server->Stop();
      (*controller)->Shutdown(absl::ZeroDuration());
      return kExitFailure;
    }
    metrics_url = absl::StrCat("http://", UrlHost(host), ":", *bound_metrics, "/metrics");
  }
  LOG(INFO) << "controller: OpenAI HTTP on " << http_url << ", metrics at " << metrics_url;

  if (args->Has("ready-file")) {
    const nlohmann::json ready = {{"grpc", (*controller)->grpc_endpoint()},
                                  {"http", http_url},
                                  {"metrics", metrics_url},
                                  {"pid", static_cast<int64_t>(getpid())}};
    if (absl::Status written = WriteReadyFile(*args->Get("ready-file"), ready); !written.ok()) {
      LOG(ERROR) << written.message();
      metrics_endpoint.reset();
      http_server->Stop();
      (*controller)->Shutdown(absl::ZeroDuration());
      return kExitFailure;
    }
  }

  const int signal_number = ShutdownSignals::Wait();
  const absl::Duration drain_timeout = absl::Seconds(deployment->lifecycle.drain_timeout_s);
  LOG(INFO) << "controller: " << ShutdownSignals::Name(signal_number) << ": draining (up to "
            << absl::FormatDuration(drain_timeout) << "; send the signal again to stop at once)";

  // The router refuses new requests from both front ends and waits for the streams in flight;
  // then the listeners close.
  (*controller)->Shutdown(drain_timeout);
  http_server->Stop();
  if (metrics_endpoint != nullptr) metrics_endpoint->Stop();
  if (args->Has("ready-file")) {
    std::error_code ignored;
    std::filesystem::remove(*args->Get("ready-file"), ignored);
  }
  LOG(INFO) << "controller: exiting";
  return 0;
}

}  // namespace
}  // namespace asyncspade::controller

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  asyncspade::ShutdownSignals::Install();
  return asyncspade::controller::Run(argc, argv);
}
