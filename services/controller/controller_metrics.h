// The metrics the controller exports at /metrics (Prometheus text format), fed by the request path
// and by members' heartbeats.
#pragma once

#include <memory>
#include <string>

#include "asyncspade/control/v1/control.pb.h"
#include "asyncspade/serving/v1/generation.pb.h"

namespace asyncspade::controller {

class ControllerMetrics {
 public:
  virtual ~ControllerMetrics() = default;
  // A request was accepted by the router.
  virtual void RequestStarted() = 0;
  // A request ended; `final` is its final message when there was one (else finish reason ERROR),
  // `stream_seconds` the time the controller saw it in flight, `api` "grpc" or "http".
  virtual void RequestFinished(const serving::v1::GenerateFinal& final, double stream_seconds,
                               const std::string& api) = 0;
  // Time between two chunks of one stream as the controller relays it.
  virtual void InterTokenLatency(double seconds) = 0;
  // A request refused before reaching a worker (reason: "invalid_argument", "unavailable", ...).
  virtual void RequestRejected(const std::string& reason) = 0;
  // Latest heartbeat of a member (gauges per member: running/waiting, KV usage, selector lag,
  // stalls, dense fallbacks, attached sequences).
  virtual void MemberLoad(const std::string& member_id, control::v1::Role role,
                          control::v1::MemberState state, const control::v1::Load& load) = 0;
  virtual void MemberGone(const std::string& member_id) = 0;
  // The exposition text.
  virtual std::string Render() const = 0;
};

// The Prometheus implementation (metric names and meanings: docs/metrics.md).
std::unique_ptr<ControllerMetrics> CreateControllerMetrics();

}  // namespace asyncspade::controller
