#include "services/controller/deployment_state.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "glog/logging.h"

namespace asyncspade::controller {
namespace {

using control::v1::MemberState;
using control::v1::Role;

constexpr size_t kMaxMemberIdLength = 64;
constexpr absl::Duration kFirstPushRetry = absl::Milliseconds(200);
constexpr absl::Duration kMaxPushRetry = absl::Seconds(5);

bool IsKnownRole(Role role) { return role == control::v1::ROLE_DECODE_WORKER || role == control::v1::ROLE_KV_SELECTOR; }

std::string SecondsText(absl::Duration d) { return absl::StrFormat("%.1f s", absl::ToDoubleSeconds(d)); }

std::string SelectorLayersText(const std::vector<SelectorLayers>& served) {
  if (served.empty()) return "none";
  return absl::StrJoin(served, ", ", [](std::string* out, const SelectorLayers& s) {
    absl::StrAppend(out, s.selector_id, " ", LayerRangesText({s.layers}));
  });
}

}  // namespace

absl::Status ValidateMemberId(const std::string& member_id) {
  if (member_id.empty() || member_id.size() > kMaxMemberIdLength) {
    return absl::InvalidArgumentError(absl::StrCat("member id '", member_id, "' has ", member_id.size(),
                                                   " characters; use 1 to ", kMaxMemberIdLength,
                                                   " (e.g. 'decode-0', 'selector-1')"));
  }
  for (char c : member_id) {
    const bool allowed =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!allowed) {
      return absl::InvalidArgumentError(
          absl::StrCat("member id '", member_id, "' contains '", std::string(1, c),
                       "'; member ids may only use letters, digits, '.', '_' and '-' (e.g. 'decode-0', 'selector-1')"));
    }
  }
  return absl::OkStatus();
}

std::string RoleName(Role role) {
  switch (role) {
    case control::v1::ROLE_DECODE_WORKER:
      return "decode worker";
    case control::v1::ROLE_KV_SELECTOR:
      return "kv selector";
    default:
      return "unknown role";
  }
}

std::string StateName(MemberState state) {
  switch (state) {
    case control::v1::MEMBER_STATE_STARTING:
      return "STARTING";
    case control::v1::MEMBER_STATE_READY:
      return "READY";
    case control::v1::MEMBER_STATE_DRAINING:
      return "DRAINING";
    case control::v1::MEMBER_STATE_UNHEALTHY:
      return "UNHEALTHY";
    case control::v1::MEMBER_STATE_GONE:
      return "GONE";
    default:
      return "UNSPECIFIED";
  }
}

DeploymentState::DeploymentState(DeploymentStateOptions options) : options_(std::move(options)) {
  absl::MutexLock lock(&mutex_);
  version_ = options_.first_counter;
  next_epoch_ = options_.first_counter;
  desired_selectors_ = options_.desired_selectors;
}

MemberState DeploymentState::EffectiveState(const MemberRecord& record) {
  if (record.silent || record.reported_state == control::v1::MEMBER_STATE_UNHEALTHY) {
    return control::v1::MEMBER_STATE_UNHEALTHY;
  }
  if (record.drain_requested || record.reported_state == control::v1::MEMBER_STATE_DRAINING) {
    return control::v1::MEMBER_STATE_DRAINING;
  }
  return record.reported_state;
}

bool DeploymentState::LinkEligible(const MemberRecord& record) {
  const MemberState state = EffectiveState(record);
  if (record.role == control::v1::ROLE_KV_SELECTOR) return state == control::v1::MEMBER_STATE_READY;
  // A draining decode worker keeps its links: its running requests still need their selections.
  return state == control::v1::MEMBER_STATE_READY || state == control::v1::MEMBER_STATE_DRAINING;
}

bool DeploymentState::HasCudaDevice(const MemberRecord& record) const {
  return std::any_of(record.devices.begin(), record.devices.end(),
                     [](const std::string& d) { return absl::StartsWith(d, "cuda"); });
}

absl::StatusOr<control::v1::RegisterResponse> DeploymentState::Register(const control::v1::RegisterRequest& request) {
  if (!IsKnownRole(request.role())) {
    return absl::InvalidArgumentError(absl::StrCat("Register of '", request.member_id(),
                                                   "': role must be ROLE_DECODE_WORKER or ROLE_KV_SELECTOR (got ",
                                                   static_cast<int>(request.role()), ")"));
  }
  RETURN_IF_ERROR(Annotate(ValidateMemberId(request.member_id()), "Register"));
  if (request.address().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("Register of '", request.member_id(),
                                                   "': address is empty; give the host:port of the member's own "
                                                   "gRPC service so the controller can reach it"));
  }
  const std::string& id = request.member_id();

  // A registration under the id of a member that still looks alive, from another address, is
  // either a second process with the same id (refused) or a restart faster than the heartbeat
  // timeout (the old address no longer answers). Telling them apart takes a connection attempt,
  // made without holding the lock.
  std::string probe_address;
  uint64_t probed_incarnation = 0;
  {
    absl::MutexLock lock(&mutex_);
    auto it = members_.find(id);
    if (it != members_.end()) {
      const MemberRecord& old = it->second;
      const bool same_process = old.pid == request.pid() && old.address == request.address();
      if (!old.silent && !same_process && old.address != request.address()) {
        probe_address = old.address;
        probed_incarnation = old.incarnation;
      }
    }
  }
  std::optional<bool> old_answers;
  if (!probe_address.empty()) {
    old_answers = options_.address_answers ? options_.address_answers(probe_address) : true;
  }

  std::vector<LostWorker> lost;
  control::v1::RegisterResponse response;
  {
    absl::MutexLock lock(&mutex_);
    const absl::Time now = absl::Now();
    auto it = members_.find(id);
    if (it != members_.end()) {
      const MemberRecord& old = it->second;
      const bool same_process = old.pid == request.pid() && old.address == request.address();
      std::string why;
      if (old.silent) {
        why = absl::StrCat("its previous incarnation has been silent for ", SecondsText(now - old.last_heartbeat));
      } else if (same_process) {
        why = "the same process registered again";
      } else if (old.address == request.address()) {
        why = absl::StrCat("the new process (pid ", request.pid(), ") now owns the old one's address");
      } else if (old_answers.has_value() && !*old_answers && probed_incarnation == old.incarnation) {
        why = absl::StrCat("its previous incarnation at ", old.address, " no longer answers");
      } else {
        return absl::AlreadyExistsError(
            absl::StrCat("member id '", id, "' is already registered by a live ", RoleName(old.role), " (pid ", old.pid,
                         " at ", old.address, ", last heartbeat ", SecondsText(now - old.last_heartbeat),
                         " ago); give this process another id, or stop the other process first (its id is released ",
                         SecondsText(options_.heartbeat_timeout), " after its last heartbeat)"));
      }
      LOG(INFO) << "member " << id << ": incarnation " << old.incarnation << " (" << RoleName(old.role) << ", pid "
                << old.pid << ", " << old.address << ") replaced by a new registration (pid " << request.pid() << ", "
                << request.address() << "): " << why;
      if (old.role == control::v1::ROLE_DECODE_WORKER) {
        lost.push_back({id, absl::StrCat("it was replaced by a new process registered under the same id (", why, ")")});
      }
      members_.erase(it);
    }
    MemberRecord record;
    record.member_id = id;
    record.role = request.role();
    record.address = request.address();
    record.devices.assign(request.devices().begin(), request.devices().end());
    record.pid = request.pid();
    record.incarnation = ++next_incarnation_;
    record.last_heartbeat = now;
    LOG(INFO) << "member " << id << " registered: " << RoleName(record.role) << ", incarnation " << record.incarnation
              << ", pid " << record.pid << ", " << record.address << ", devices ["
              << absl::StrJoin(record.devices, ", ") << "]";
    members_.emplace(id, std::move(record));
    RecomputeAssignmentLocked(absl::StrCat(id, " registered"));
    ++push_work_;

    response.set_member_id(id);
    response.set_incarnation(members_.at(id).incarnation);
    response.set_heartbeat_interval_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(options_.heartbeat_interval)));
    response.set_heartbeat_timeout_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(options_.heartbeat_timeout)));
  }
  NotifyLost(lost);
  return response;
}

control::v1::HeartbeatResponse DeploymentState::Heartbeat(const control::v1::HeartbeatRequest& request) {
  control::v1::HeartbeatResponse response;
  std::optional<MemberRecord> load_report;
  {
    absl::MutexLock lock(&mutex_);
    response.set_assignment_version(version_);
    auto it = members_.find(request.member_id());
    if (it == members_.end() || it->second.incarnation != request.incarnation()) {
      response.set_re_register(true);
      return response;
    }
    MemberRecord& record = it->second;
    const bool was_eligible = LinkEligible(record);
    const MemberState was = EffectiveState(record);
    record.last_heartbeat = absl::Now();
    record.load = request.load();
    record.applied_version = request.assignment_version();
    if (record.drain_requested) record.heartbeat_since_drain = true;
    if (record.silent) {
      record.silent = false;
      ++push_work_;
    }
    switch (request.state()) {
      case control::v1::MEMBER_STATE_STARTING:
      case control::v1::MEMBER_STATE_READY:
      case control::v1::MEMBER_STATE_DRAINING:
      case control::v1::MEMBER_STATE_UNHEALTHY:
        record.reported_state = request.state();
        break;
      default:
        break;  // UNSPECIFIED / GONE are not states a live member reports: keep the last one
    }
    const MemberState now_state = EffectiveState(record);
    if (now_state != was) {
      record.next_push_attempt = absl::InfinitePast();
      ++push_work_;
      LOG(INFO) << "member " << record.member_id << " (" << RoleName(record.role) << "): " << StateName(was) << " -> "
                << StateName(now_state);
    }
    if (LinkEligible(record) != was_eligible) {
      RecomputeAssignmentLocked(absl::StrCat(record.member_id, " is ", StateName(now_state)));
    }
    response.set_assignment_version(version_);
    response.set_drain_requested(record.drain_requested);
    load_report = record;
  }
  if (load_report.has_value()) ReportLoad(*load_report);
  return response;
}

absl::Status DeploymentState::Deregister(const control::v1::DeregisterRequest& request) {
  std::vector<LostWorker> lost;
  {
    absl::MutexLock lock(&mutex_);
    auto it = members_.find(request.member_id());
    if (it == members_.end()) return absl::OkStatus();  // already gone: deregistering is idempotent
    if (it->second.incarnation != request.incarnation()) {
      // A replaced process saying goodbye must not remove its successor.
      LOG(INFO) << "member " << request.member_id() << ": ignoring Deregister of old incarnation "
                << request.incarnation() << " (current " << it->second.incarnation << ")";
      return absl::OkStatus();
    }
    LOG(INFO) << "member " << request.member_id() << " (" << RoleName(it->second.role) << ") deregistered";
    if (it->second.role == control::v1::ROLE_DECODE_WORKER) {
      lost.push_back({request.member_id(), "it deregistered (shutting down)"});
    }
    members_.erase(it);
    RecomputeAssignmentLocked(absl::StrCat(request.member_id(), " deregistered"));
  }
  if (options_.metrics != nullptr) options_.metrics->MemberGone(request.member_id());
  NotifyLost(lost);
  return absl::OkStatus();
}

absl::Status DeploymentState::RequestDrain(const std::string& member_id) {
  absl::MutexLock lock(&mutex_);
  auto it = members_.find(member_id);
  if (it == members_.end()) {
    return absl::NotFoundError(absl::StrCat("Drain: no member '", member_id, "'; the registered members are: ",
                                            KnownMembersLocked(), " (see `asyncspade ctl status`)"));
  }
  MemberRecord& record = it->second;
  if (record.drain_requested) return absl::OkStatus();
  const bool was_eligible = LinkEligible(record);
  record.drain_requested = true;
  record.heartbeat_since_drain = false;
  record.drain_delivered = false;
  ++push_work_;
  LOG(INFO) << "member " << member_id << " (" << RoleName(record.role) << "): drain requested; it gets no new "
            << (record.role == control::v1::ROLE_DECODE_WORKER ? "requests" : "links");
  if (LinkEligible(record) != was_eligible) RecomputeAssignmentLocked(absl::StrCat(member_id, " is draining"));
  return absl::OkStatus();
}

absl::StatusOr<int> DeploymentState::ScaleSelectors(int replicas) {
  if (replicas < 0) {
    return absl::InvalidArgumentError(absl::StrCat("ScaleSelectors: replicas must be >= 0 (got ", replicas, ")"));
  }
  const LayerLayout& layout = options_.layout;
  if (layout.explicit_ranges.has_value() && replicas != static_cast<int>(layout.explicit_ranges->size())) {
    return absl::FailedPreconditionError(
        absl::StrCat("ScaleSelectors: the deployment's selectors.layers lists ", layout.explicit_ranges->size(),
                     " explicit layer range(s), one per selector, so the selector count cannot change to ", replicas,
                     "; set selectors.layers: auto in the deployment YAML to scale selectors"));
  }
  if (replicas > layout.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScaleSelectors: ", replicas, " selectors for a model of ", layout.num_layers,
                     " layers; each selector needs at least one layer, so use at most ", layout.num_layers));
  }
  if (replicas == 0 && options_.default_policy_needs_selectors) {
    return absl::FailedPreconditionError(
        "ScaleSelectors: the deployment's default policy is asyncspade, which needs at least one KV selector; "
        "scale to 1 or more, or change sparse.policy in the deployment YAML");
  }
  absl::MutexLock lock(&mutex_);
  if (replicas != desired_selectors_) {
    LOG(INFO) << "desired selectors: " << desired_selectors_ << " -> " << replicas;
    desired_selectors_ = replicas;
  }
  return desired_selectors_;
}

int DeploymentState::CheckLiveness(absl::Time now) {
  std::vector<LostWorker> lost;
  std::vector<MemberRecord> reports;
  {
    absl::MutexLock lock(&mutex_);
    std::vector<std::string> newly_silent;
    for (auto& [id, record] : members_) {
      if (record.silent || now - record.last_heartbeat <= options_.heartbeat_timeout) continue;
      record.silent = true;
      newly_silent.push_back(id);
      LOG(WARNING) << "member " << id << " (" << RoleName(record.role) << ", pid " << record.pid << ", "
                   << record.address << "): no heartbeat for " << SecondsText(now - record.last_heartbeat)
                   << ", marked UNHEALTHY";
      if (record.role == control::v1::ROLE_DECODE_WORKER) {
        lost.push_back({id, absl::StrCat("it sent no heartbeat for ", SecondsText(now - record.last_heartbeat))});
      }
      reports.push_back(record);
    }
    if (!newly_silent.empty()) {
      RecomputeAssignmentLocked(absl::StrCat(absl::StrJoin(newly_silent, ", "), " unhealthy"));
    }
  }
  for (const MemberRecord& r : reports) ReportLoad(r);
  NotifyLost(lost);
  return static_cast<int>(reports.size());
}

void DeploymentState::RecomputeAssignmentLocked(const std::string& reason) {
  std::vector<AssignmentMember> view;
  view.reserve(members_.size());
  for (const auto& [id, record] : members_) {
    view.push_back({id, record.role, record.incarnation, LinkEligible(record), HasCudaDevice(record)});
  }
  uint64_t epoch = next_epoch_;
  std::vector<AssignedLink> links = ComputeLinks(view, options_.layout, links_, &epoch);
  const bool changed = links.size() != links_.size() || !std::equal(links.begin(), links.end(), links_.begin(),
                                                                    [](const AssignedLink& a, const AssignedLink& b) {
                                                                      return SameLink(a.link, b.link);
                                                                    });
  if (!changed) return;
  next_epoch_ = epoch;
  ++version_;
  auto links_of = [](const std::vector<AssignedLink>& all, const std::string& id) {
    std::vector<const control::v1::SelectorLink*> out;
    for (const AssignedLink& l : all) {
      if (l.link.decode_worker_id() == id || l.link.selector_id() == id) out.push_back(&l.link);
    }
    return out;
  };
  for (auto& [id, record] : members_) {
    const auto before = links_of(links_, id);
    const auto after = links_of(links, id);
    const bool same = before.size() == after.size() &&
                      std::equal(before.begin(), before.end(), after.begin(),
                                 [](const control::v1::SelectorLink* a, const control::v1::SelectorLink* b) {
                                   return SameLink(*a, *b);
                                 });
    if (!same) record.links_version = version_;
  }
  links_ = std::move(links);
  // A new version is worth delivering at once, even to members still backing off from a failure.
  for (auto& [id, record] : members_) record.next_push_attempt = absl::InfinitePast();
  ++push_work_;
  const std::vector<SelectorLayers> served = ServedLayersLocked();
  const std::vector<LayerRange> uncovered = asyncspade::controller::UncoveredLayers(served, options_.layout.num_layers);
  LOG(INFO) << "assignment version " << version_ << " (" << reason << "): " << links_.size()
            << " link(s); selectors serve " << SelectorLayersText(served)
            << (uncovered.empty() ? "" : absl::StrCat("; layers without a selector: ", LayerRangesText(uncovered)));
}

std::vector<SelectorLayers> DeploymentState::ServedLayersLocked() const {
  std::vector<AssignmentMember> view;
  for (const auto& [id, record] : members_) {
    view.push_back({id, record.role, record.incarnation, LinkEligible(record), HasCudaDevice(record)});
  }
  return AssignSelectorLayers(view, options_.layout);
}

std::vector<LayerRange> DeploymentState::UncoveredLayers() const {
  absl::ReaderMutexLock lock(&mutex_);
  return asyncspade::controller::UncoveredLayers(ServedLayersLocked(), options_.layout.num_layers);
}

control::v1::Assignment DeploymentState::AssignmentForLocked(const std::string& member_id) const {
  control::v1::Assignment assignment;
  assignment.set_version(version_);
  for (const AssignedLink& l : links_) {
    if (l.link.decode_worker_id() == member_id || l.link.selector_id() == member_id) {
      *assignment.add_links() = l.link;
    }
  }
  return assignment;
}

control::v1::Assignment DeploymentState::CurrentAssignment() const {
  absl::ReaderMutexLock lock(&mutex_);
  control::v1::Assignment assignment;
  assignment.set_version(version_);
  for (const AssignedLink& l : links_) *assignment.add_links() = l.link;
  return assignment;
}

uint64_t DeploymentState::assignment_version() const {
  absl::ReaderMutexLock lock(&mutex_);
  return version_;
}

std::string DeploymentState::KnownMembersLocked() const {
  if (members_.empty()) return "(none)";
  std::vector<std::string> ids;
  for (const auto& [id, record] : members_) ids.push_back(id);
  std::sort(ids.begin(), ids.end(), NaturalIdLess);
  return absl::StrJoin(ids, ", ");
}

control::v1::ListMembersResponse DeploymentState::ListMembers(const InFlightCounter& in_flight) const {
  control::v1::ListMembersResponse response;
  absl::ReaderMutexLock lock(&mutex_);
  const absl::Time now = absl::Now();
  response.set_assignment_version(version_);
  response.set_desired_selectors(desired_selectors_);
  std::vector<const MemberRecord*> ordered;
  for (const auto& [id, record] : members_) ordered.push_back(&record);
  std::sort(ordered.begin(), ordered.end(), [](const MemberRecord* a, const MemberRecord* b) {
    if (a->role != b->role) return a->role < b->role;  // decode workers first
    return NaturalIdLess(a->member_id, b->member_id);
  });
  for (const MemberRecord* record : ordered) {
    control::v1::Member* member = response.add_members();
    member->set_member_id(record->member_id);
    member->set_role(record->role);
    member->set_address(record->address);
    for (const std::string& d : record->devices) member->add_devices(d);
    member->set_state(EffectiveState(*record));
    *member->mutable_load() = record->load;
    for (const AssignedLink& l : links_) {
      if (l.link.decode_worker_id() == record->member_id || l.link.selector_id() == record->member_id) {
        *member->add_links() = l.link;
      }
    }
    member->set_incarnation(record->incarnation);
    member->set_pid(record->pid);
    member->set_seconds_since_heartbeat(absl::ToDoubleSeconds(now - record->last_heartbeat));
    member->set_applied_assignment_version(record->applied_version);
    member->set_drain_requested(record->drain_requested);
    if (record->role == control::v1::ROLE_DECODE_WORKER && in_flight) {
      member->set_in_flight_requests(in_flight(record->member_id));
    }
  }
  for (const LayerRange& r :
       asyncspade::controller::UncoveredLayers(ServedLayersLocked(), options_.layout.num_layers)) {
    control::v1::LayerRange* out = response.add_uncovered_layers();
    out->set_first(r.first);
    out->set_last(r.last);
  }
  return response;
}

control::v1::GetDesiredStateResponse DeploymentState::DesiredState(const InFlightCounter& in_flight) const {
  control::v1::GetDesiredStateResponse response;
  absl::ReaderMutexLock lock(&mutex_);
  response.set_desired_selectors(desired_selectors_);
  std::vector<std::string> drained;
  for (const auto& [id, record] : members_) {
    if (!record.drain_requested) continue;
    bool done = record.silent;  // a dead member has nothing left to finish
    if (!done && record.heartbeat_since_drain) {
      const control::v1::Load& load = record.load;
      const bool idle = load.running_requests() == 0 && load.waiting_requests() == 0 && load.attached_sequences() == 0;
      bool links_released = true;
      if (record.role == control::v1::ROLE_KV_SELECTOR) {
        // Its links were withdrawn when it started draining; it is done once it applied that.
        const bool has_links = std::any_of(links_.begin(), links_.end(),
                                           [&](const AssignedLink& l) { return l.link.selector_id() == id; });
        links_released = !has_links && record.applied_version >= record.links_version;
      }
      const bool nothing_relayed = record.role != control::v1::ROLE_DECODE_WORKER || !in_flight || in_flight(id) == 0;
      done = idle && links_released && nothing_relayed;
    }
    if (done) drained.push_back(id);
  }
  std::sort(drained.begin(), drained.end(), NaturalIdLess);
  for (const std::string& id : drained) response.add_drained_members(id);
  return response;
}

std::vector<RoutableWorker> DeploymentState::RoutableWorkers() const {
  std::vector<RoutableWorker> out;
  absl::ReaderMutexLock lock(&mutex_);
  for (const auto& [id, record] : members_) {
    if (record.role != control::v1::ROLE_DECODE_WORKER) continue;
    if (EffectiveState(record) != control::v1::MEMBER_STATE_READY) continue;
    out.push_back({id, record.address, record.load.running_requests() + record.load.waiting_requests()});
  }
  return out;
}

std::vector<PendingPush> DeploymentState::TakePendingPushes(absl::Time now) {
  std::vector<PendingPush> pushes;
  absl::MutexLock lock(&mutex_);
  push_work_taken_ = push_work_;
  for (auto& [id, record] : members_) {
    if (record.silent || record.push_in_flight || now < record.next_push_attempt) continue;
    // A STARTING member has no links and may not be listening yet; it gets the current assignment
    // as soon as it reports READY.
    const bool need_assignment =
        record.delivered_version < version_ && EffectiveState(record) != control::v1::MEMBER_STATE_STARTING;
    const bool need_drain = record.drain_requested && !record.drain_delivered;
    if (!need_assignment && !need_drain) continue;
    PendingPush push;
    push.member_id = id;
    push.incarnation = record.incarnation;
    push.role = record.role;
    push.address = record.address;
    push.send_assignment = need_assignment;
    if (need_assignment) push.assignment = AssignmentForLocked(id);
    push.send_drain = need_drain;
    record.push_in_flight = true;
    pushes.push_back(std::move(push));
  }
  return pushes;
}

void DeploymentState::PushFinished(const PendingPush& push, const absl::Status& assignment_status,
                                   const absl::Status& drain_status) {
  absl::MutexLock lock(&mutex_);
  auto it = members_.find(push.member_id);
  if (it == members_.end() || it->second.incarnation != push.incarnation) return;  // gone or replaced meanwhile
  MemberRecord& record = it->second;
  record.push_in_flight = false;
  std::vector<std::string> failures;
  if (push.send_assignment) {
    if (assignment_status.ok()) {
      record.delivered_version = std::max(record.delivered_version, push.assignment.version());
    } else {
      failures.push_back(
          absl::StrCat("assignment version ", push.assignment.version(), ": ", assignment_status.message()));
    }
  }
  if (push.send_drain) {
    // A member without a Drain RPC still learns of the drain from its heartbeats.
    if (drain_status.ok() || drain_status.code() == absl::StatusCode::kUnimplemented) {
      record.drain_delivered = true;
    } else {
      failures.push_back(absl::StrCat("drain: ", drain_status.message()));
    }
  }
  if (failures.empty()) {
    record.push_failures = 0;
    record.next_push_attempt = absl::InfinitePast();
  } else {
    ++record.push_failures;
    const absl::Duration backoff =
        std::min(kMaxPushRetry, kFirstPushRetry * (int64_t{1} << std::min(record.push_failures - 1, 10)));
    record.next_push_attempt = absl::Now() + backoff;
    if (record.push_failures == 1 || record.push_failures % 10 == 0) {
      LOG(WARNING) << "member " << push.member_id << " (" << push.address << "): push failed " << record.push_failures
                   << " time(s), retrying in " << absl::FormatDuration(backoff) << ": "
                   << absl::StrJoin(failures, "; ");
    }
  }
  ++push_work_;
}

void DeploymentState::AwaitPushWork(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  auto changed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return push_work_ != push_work_taken_; };
  mutex_.AwaitWithTimeout(absl::Condition(&changed), timeout);
}

void DeploymentState::NotifyLost(const std::vector<LostWorker>& lost) {
  if (!options_.on_decode_worker_lost) return;
  for (const LostWorker& w : lost) options_.on_decode_worker_lost(w.member_id, w.reason);
}

void DeploymentState::ReportLoad(const MemberRecord& record) {
  if (options_.metrics == nullptr) return;
  options_.metrics->MemberLoad(record.member_id, record.role, EffectiveState(record), record.load);
}

}  // namespace asyncspade::controller
