// PrometheusControllerMetrics: the controller's /metrics. Every metric is described in
// docs/metrics.md; keep the two in step.
#include "services/controller/controller_metrics.h"

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/metrics.h"

namespace asyncspade::controller {
namespace {

using control::v1::Load;
using control::v1::MemberState;
using control::v1::Role;
using serving::v1::FinishReason;
using serving::v1::GenerateFinal;

std::string RoleLabel(Role role) {
  switch (role) {
    case control::v1::ROLE_DECODE_WORKER: return "decode_worker";
    case control::v1::ROLE_KV_SELECTOR: return "kv_selector";
    default: return "unspecified";
  }
}

std::string StateLabel(MemberState state) {
  switch (state) {
    case control::v1::MEMBER_STATE_STARTING: return "starting";
    case control::v1::MEMBER_STATE_READY: return "ready";
    case control::v1::MEMBER_STATE_DRAINING: return "draining";
    case control::v1::MEMBER_STATE_UNHEALTHY: return "unhealthy";
    case control::v1::MEMBER_STATE_GONE: return "gone";
    default: return "unspecified";
  }
}

std::string FinishReasonLabel(FinishReason reason) {
  switch (reason) {
    case serving::v1::FINISH_REASON_LENGTH: return "length";
    case serving::v1::FINISH_REASON_STOP: return "stop";
    case serving::v1::FINISH_REASON_STOP_STRING: return "stop_string";
    case serving::v1::FINISH_REASON_ABORTED: return "aborted";
    case serving::v1::FINISH_REASON_ERROR: return "error";
    default: return "unspecified";
  }
}

bool CompletedNormally(FinishReason reason) {
  return reason == serving::v1::FINISH_REASON_LENGTH || reason == serving::v1::FINISH_REASON_STOP ||
         reason == serving::v1::FINISH_REASON_STOP_STRING;
}

// Inter-token latency: 1 ms .. 10 s. A sparse decode step of a small model is a few ms; a stalled
// step under heavy batching can reach seconds.
std::vector<double> InterTokenBuckets() {
  return {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
          0.1,   0.15,   0.2,   0.3,    0.5,  0.75,  1.0,  2.5,   5.0,  10.0};
}

// Time to first token and queue time: 1 ms .. 10 min (a 32K-token prefill behind a queue).
std::vector<double> FirstTokenBuckets() {
  return {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
          80.0,  160.0, 320.0, 640.0};
}

// End-to-end latency: 10 ms .. 1 h (32K reasoning tokens at 100 ms/token is ~55 min).
std::vector<double> EndToEndBuckets() {
  return {0.01,  0.05,  0.1,   0.25,  0.5,   1.0,    2.5,    5.0,    10.0,   20.0,
          40.0,  60.0,  120.0, 240.0, 480.0, 960.0,  1800.0, 2700.0, 3600.0};
}

class PrometheusControllerMetrics final : public ControllerMetrics {
 public:
  PrometheusControllerMetrics() {
    ttft_ = registry_
                .AddHistogram("asyncspade_time_to_first_token_seconds",
                              "Time from accepting a request to its first generated token (TTFT), as "
                              "measured by the decode worker.",
                              {}, FirstTokenBuckets())
                ->WithLabels({});
    inter_token_ = registry_
                       .AddHistogram("asyncspade_inter_token_latency_seconds",
                                     "Time between two consecutive streamed chunks of one request as the "
                                     "controller relays them (a chunk normally carries one token): TPOT.",
                                     {}, InterTokenBuckets())
                       ->WithLabels({});
    e2e_ = registry_
               .AddHistogram("asyncspade_e2e_request_latency_seconds",
                             "Time the controller saw a request in flight, from routing to its final "
                             "message, for requests that completed (finish reason length, stop or "
                             "stop_string).",
                             {}, EndToEndBuckets())
               ->WithLabels({});
    queue_ = registry_
                 .AddHistogram("asyncspade_request_queue_time_seconds",
                               "Time a request waited in its decode worker's queue before it was first "
                               "scheduled.",
                               {}, FirstTokenBuckets())
                 ->WithLabels({});
    requests_ = registry_.AddCounter("asyncspade_requests_total",
                                     "Requests that ended, by finish reason (length, stop, stop_string, "
                                     "aborted, error) and front end (grpc, http).",
                                     {"finish_reason", "api"});
    rejected_ = registry_.AddCounter("asyncspade_requests_rejected_total",
                                     "Requests refused before reaching a decode worker, by status code "
                                     "(invalid_argument, unavailable, failed_precondition, ...).",
                                     {"reason"});
    prompt_tokens_ = registry_
                         .AddCounter("asyncspade_prompt_tokens_total",
                                     "Prompt tokens of the requests that ended.")
                         ->WithLabels({});
    generation_tokens_ = registry_
                             .AddCounter("asyncspade_generation_tokens_total",
                                         "Tokens generated for the requests that ended.")
                             ->WithLabels({});
    in_flight_ = registry_
                     .AddGauge("asyncspade_requests_in_flight",
                               "Requests the controller is relaying now (accepted, not yet ended).")
                     ->WithLabels({});
    running_ = registry_
                   .AddGauge("asyncspade_requests_running",
                             "Requests being decoded, summed over the decode workers (latest heartbeats).")
                   ->WithLabels({});
    waiting_ = registry_
                   .AddGauge("asyncspade_requests_waiting",
                             "Requests queued for decoding, summed over the decode workers (latest "
                             "heartbeats).")
                   ->WithLabels({});
    member_running_ = registry_.AddGauge("asyncspade_member_requests_running",
                                         "Requests being decoded by one decode worker.", {"member"});
    member_waiting_ = registry_.AddGauge("asyncspade_member_requests_waiting",
                                         "Requests queued in one decode worker.", {"member"});
    kv_usage_ = registry_.AddGauge("asyncspade_kv_cache_usage_ratio",
                                   "Fraction (0..1) of a decode worker's KV-cache blocks in use.", {"member"});
    kv_blocks_ = registry_.AddGauge("asyncspade_kv_cache_blocks",
                                    "KV-cache blocks a decode worker has in total.", {"member"});
    selector_lag_ = registry_.AddGauge("asyncspade_selector_lag_steps",
                                       "Mean age, in decode steps, of the selections a decode worker used "
                                       "(1 = the selector keeps up).",
                                       {"member"});
    selector_stalls_ = registry_.AddCounter("asyncspade_selector_stalls_total",
                                            "Late KV-selector replies seen by a decode worker (as it reports "
                                            "them; resets when the worker restarts).",
                                            {"member"});
    dense_fallbacks_ = registry_.AddCounter("asyncspade_dense_fallbacks_total",
                                            "(step, layer) pairs a decode worker attended densely because no "
                                            "selection was available (as it reports them; resets when the "
                                            "worker restarts).",
                                            {"member"});
    attached_sequences_ = registry_.AddGauge("asyncspade_selector_attached_sequences",
                                             "Sequences a KV selector currently indexes.", {"member"});
    members_ = registry_.AddGauge("asyncspade_members",
                                  "Members of the deployment known to the controller, by role and state.",
                                  {"role", "state"});
    for (Role role : {control::v1::ROLE_DECODE_WORKER, control::v1::ROLE_KV_SELECTOR}) {
      for (MemberState state : {control::v1::MEMBER_STATE_STARTING, control::v1::MEMBER_STATE_READY,
                                control::v1::MEMBER_STATE_DRAINING, control::v1::MEMBER_STATE_UNHEALTHY,
                                control::v1::MEMBER_STATE_GONE}) {
        members_->WithLabels({RoleLabel(role), StateLabel(state)});
      }
    }
  }

  void RequestStarted() override { in_flight_->Add(1); }

  void RequestFinished(const GenerateFinal& final, double stream_seconds, const std::string& api) override {
    in_flight_->Add(-1);
    requests_->WithLabels({FinishReasonLabel(final.finish_reason()), api})->Increment();
    prompt_tokens_->Increment(final.usage().prompt_tokens());
    generation_tokens_->Increment(final.usage().completion_tokens());
    if (!CompletedNormally(final.finish_reason())) return;
    e2e_->Observe(stream_seconds);
    if (final.has_timings()) {
      queue_->Observe(final.timings().queue_seconds());
      if (final.usage().completion_tokens() > 0) ttft_->Observe(final.timings().first_token_seconds());
    }
  }

  void InterTokenLatency(double seconds) override { inter_token_->Observe(seconds); }

  void RequestRejected(const std::string& reason) override { rejected_->WithLabels({reason})->Increment(); }

  void MemberLoad(const std::string& member_id, Role role, MemberState state, const Load& load) override {
    absl::MutexLock lock(&mu_);
    const auto previous = members_by_id_.find(member_id);
    if (previous != members_by_id_.end() && previous->second.role != role) RemoveMemberSeries(member_id);
    members_by_id_[member_id] = MemberView{role, state, load};
    if (state == control::v1::MEMBER_STATE_GONE) {
      RemoveMemberSeries(member_id);
    } else if (role == control::v1::ROLE_DECODE_WORKER) {
      member_running_->WithLabels({member_id})->Set(load.running_requests());
      member_waiting_->WithLabels({member_id})->Set(load.waiting_requests());
      kv_usage_->WithLabels({member_id})->Set(load.kv_cache_usage());
      kv_blocks_->WithLabels({member_id})->Set(static_cast<double>(load.kv_blocks_total()));
      selector_lag_->WithLabels({member_id})->Set(load.selector_lag_steps());
      selector_stalls_->WithLabels({member_id})->SetTotal(static_cast<double>(load.selector_stalls_total()));
      dense_fallbacks_->WithLabels({member_id})->SetTotal(static_cast<double>(load.dense_fallbacks_total()));
    } else if (role == control::v1::ROLE_KV_SELECTOR) {
      attached_sequences_->WithLabels({member_id})->Set(static_cast<double>(load.attached_sequences()));
    }
    RefreshAggregates();
  }

  void MemberGone(const std::string& member_id) override {
    absl::MutexLock lock(&mu_);
    members_by_id_.erase(member_id);
    RemoveMemberSeries(member_id);
    RefreshAggregates();
  }

  std::string Render() const override { return registry_.Render(); }

 private:
  struct MemberView {
    Role role;
    MemberState state;
    Load load;
  };

  void RemoveMemberSeries(const std::string& member_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (metrics::GaugeFamily* family :
         {member_running_, member_waiting_, kv_usage_, kv_blocks_, selector_lag_, attached_sequences_}) {
      family->Remove({member_id});
    }
    selector_stalls_->Remove({member_id});
    dense_fallbacks_->Remove({member_id});
  }

  // Recomputed from every member's latest view rather than adjusted by deltas, so a missed or
  // repeated heartbeat can never leave the sums drifting.
  void RefreshAggregates() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    double running = 0, waiting = 0;
    std::map<std::pair<std::string, std::string>, int> members_by_role_state;
    for (const auto& [id, member] : members_by_id_) {
      ++members_by_role_state[{RoleLabel(member.role), StateLabel(member.state)}];
      if (member.role == control::v1::ROLE_DECODE_WORKER && member.state != control::v1::MEMBER_STATE_GONE) {
        running += member.load.running_requests();
        waiting += member.load.waiting_requests();
      }
    }
    running_->Set(running);
    waiting_->Set(waiting);
    for (Role role : {control::v1::ROLE_DECODE_WORKER, control::v1::ROLE_KV_SELECTOR}) {
      for (MemberState state : {control::v1::MEMBER_STATE_STARTING, control::v1::MEMBER_STATE_READY,
                                control::v1::MEMBER_STATE_DRAINING, control::v1::MEMBER_STATE_UNHEALTHY,
                                control::v1::MEMBER_STATE_GONE}) {
        const auto key = std::make_pair(RoleLabel(role), StateLabel(state));
        const auto it = members_by_role_state.find(key);
        members_->WithLabels({key.first, key.second})->Set(it == members_by_role_state.end() ? 0 : it->second);
        if (it != members_by_role_state.end()) members_by_role_state.erase(it);
      }
    }
    // Unexpected (unspecified) roles or states still show up rather than vanish.
    for (const auto& [key, count] : members_by_role_state) members_->WithLabels({key.first, key.second})->Set(count);
  }

  metrics::Registry registry_;
  std::shared_ptr<metrics::Histogram> ttft_, inter_token_, e2e_, queue_;
  metrics::CounterFamily* requests_;
  metrics::CounterFamily* rejected_;
  std::shared_ptr<metrics::Counter> prompt_tokens_, generation_tokens_;
  std::shared_ptr<metrics::Gauge> in_flight_, running_, waiting_;
  metrics::GaugeFamily* member_running_;
  metrics::GaugeFamily* member_waiting_;
  metrics::GaugeFamily* kv_usage_;
  metrics::GaugeFamily* kv_blocks_;
  metrics::GaugeFamily* selector_lag_;
  metrics::CounterFamily* selector_stalls_;
  metrics::CounterFamily* dense_fallbacks_;
  metrics::GaugeFamily* attached_sequences_;
  metrics::GaugeFamily* members_;

  absl::Mutex mu_;
  std::map<std::string, MemberView> members_by_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<ControllerMetrics> CreateControllerMetrics() {
  return std::make_unique<PrometheusControllerMetrics>();
}

}  // namespace asyncspade::controller
