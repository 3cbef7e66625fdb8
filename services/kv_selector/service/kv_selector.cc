#include "services/kv_selector/service/kv_selector.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/control/control_plane_store.h"
#include "glog/logging.h"
#include "grpcpp/server_builder.h"

namespace asyncspade {
namespace {

std::string HostPort(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

bool SameLink(const control::v1::SelectorLink& a, const control::v1::SelectorLink& b) {
  return a.channel_id() == b.channel_id() && a.epoch() == b.epoch() && a.decode_worker_id() == b.decode_worker_id() &&
         a.layers().first() == b.layers().first() && a.layers().last() == b.layers().last() &&
         a.transport() == b.transport();
}

}  // namespace

absl::StatusOr<std::unique_ptr<KvSelector>> KvSelector::Create(KvSelectorOptions options) {
  if (options.controller_address.empty()) {
    return absl::InvalidArgumentError("--controller HOST:PORT is required: the selector registers there");
  }
  if (options.member_id.empty()) return absl::InvalidArgumentError("--id is required, e.g. --id selector-0");
  for (const std::string& device : options.devices) {
    if (device != "cpu") {
      return absl::UnimplementedError(absl::StrCat("--devices ", device,
                                                   ": this selector runs the CPU selection core only; use --devices cpu"));
    }
  }
  return std::unique_ptr<KvSelector>(new KvSelector(std::move(options)));
}

KvSelector::KvSelector(KvSelectorOptions options) : options_(std::move(options)) {}

KvSelector::~KvSelector() { Shutdown(); }

std::string KvSelector::address() const { return HostPort(options_.host, port_); }

absl::Status KvSelector::Start() {
  KvSelectorServiceHooks hooks;
  hooks.apply_links = [this](const control::v1::Assignment& assignment) { return ApplyLinks(assignment); };
  hooks.drain = [this] { Drain(); };
  hooks.stats = [this] { return Stats(); };
  service_ = std::make_unique<KvSelectorServiceImpl>(std::move(hooks));
  store_ = std::make_unique<ControlPlaneRendezvousStore>(options_.controller_address);

  grpc::ServerBuilder builder;
  builder.AddListeningPort(HostPort(options_.host, options_.port), grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("selector ", options_.member_id, ": cannot listen on ",
                                               HostPort(options_.host, options_.port),
                                               "; is the port free and the address local? (--host, --port)"));
  }
  MemberOptions member;
  member.controller_address = options_.controller_address;
  member.role = control::v1::ROLE_KV_SELECTOR;
  member.member_id = options_.member_id;
  member.address = address();
  member.devices = options_.devices;
  member.register_timeout = options_.register_timeout;
  member_ = std::make_unique<MemberClient>(member, [this] { return CurrentLoad(); });
  if (absl::Status registered = member_->Register(); !registered.ok()) {
    server_->Shutdown(absl::ToChronoTime(absl::Now()));
    member_.reset();
    return registered;
  }
  // Nothing to load: ready as soon as the service is up.
  member_->SetState(control::v1::MEMBER_STATE_READY);
  member_->StartHeartbeats();
  watcher_ = std::thread([this] {
    while (!stop_watching_.WaitForNotificationWithTimeout(absl::Milliseconds(100))) {
      if (member_->drain_requested()) Drain();
    }
  });
  LOG(INFO) << "selector " << options_.member_id << " READY on " << address();
  return absl::OkStatus();
}

absl::Status KvSelector::ApplyLinks(const control::v1::Assignment& assignment) {
  absl::flat_hash_map<std::string, control::v1::SelectorLink> desired;
  for (const control::v1::SelectorLink& link : assignment.links()) {
    if (link.selector_id() != options_.member_id) continue;
    if (link.layers().first() < 0 || link.layers().first() > link.layers().last()) {
      return absl::InvalidArgumentError(absl::StrCat("assignment ", assignment.version(), ": link ", link.channel_id(),
                                                     " has the empty layer range ", link.layers().first(), "-",
                                                     link.layers().last()));
    }
    desired[link.channel_id()] = link;
  }
  absl::MutexLock lock(&mutex_);
  if (shut_down_) return absl::FailedPreconditionError(absl::StrCat("selector ", options_.member_id, " is shutting down"));
  std::vector<std::string> withdrawn;
  for (const auto& [id, server] : links_) {
    auto it = desired.find(id);
    if (it == desired.end() || !SameLink(it->second, server->link())) withdrawn.push_back(id);
  }
  for (const std::string& id : withdrawn) {
    std::unique_ptr<SelectorChannelServer> server = std::move(links_[id]);
    links_.erase(id);
    LOG(INFO) << "selector " << options_.member_id << ": closing link " << id << " epoch " << server->link().epoch();
    closers_.emplace_back([server = std::move(server)]() mutable { server->Stop("the controller withdrew this link"); });
  }
  for (const auto& [id, link] : desired) {
    if (links_.contains(id)) continue;
    SelectorChannelOptions channel_options;
    channel_options.selector_id = options_.member_id;
    channel_options.store = store_.get();
    channel_options.host = options_.host;
    channel_options.connect_timeout = options_.connect_timeout;
    channel_options.peer_timeout = options_.peer_timeout;
    channel_options.max_index_bytes = options_.max_index_bytes_per_link;
    channel_options.counters = &counters_;
    auto server = std::make_unique<SelectorChannelServer>(link, channel_options);
    LOG(INFO) << "selector " << options_.member_id << ": opening link " << id << " epoch " << link.epoch()
              << " from decode worker " << link.decode_worker_id() << " (layers " << link.layers().first() << "-"
              << link.layers().last() << ")";
    server->Start();
    links_[id] = std::move(server);
  }
  applied_version_ = assignment.version();
  if (member_ != nullptr) member_->SetAppliedAssignmentVersion(assignment.version());
  return absl::OkStatus();
}

void KvSelector::Drain() {
  if (draining_.exchange(true)) return;
  LOG(INFO) << "selector " << options_.member_id << " draining: it keeps serving its links until the controller "
            << "withdraws them";
  if (member_ != nullptr) member_->SetState(control::v1::MEMBER_STATE_DRAINING);
}

int KvSelector::serving_links() const {
  absl::MutexLock lock(&mutex_);
  int serving = 0;
  for (const auto& [id, server] : links_) serving += server->serving() ? 1 : 0;
  return serving;
}

selector::v1::SelectorStatsResponse KvSelector::Stats() const {
  selector::v1::SelectorStatsResponse stats;
  {
    absl::MutexLock lock(&mutex_);
    for (const auto& [id, server] : links_) {
      stats.set_attached_sequences(stats.attached_sequences() + server->attached_sequences());
      stats.set_indexed_keys(stats.indexed_keys() + server->indexed_keys());
    }
  }
  stats.set_selections_total(counters_.selections_total);
  const int64_t messages = counters_.select_messages_total;
  if (messages > 0) stats.set_mean_select_seconds(counters_.select_nanoseconds_total * 1e-9 / messages);
  return stats;
}

control::v1::Load KvSelector::CurrentLoad() const {
  control::v1::Load load;
  load.set_attached_sequences(Stats().attached_sequences());
  return load;
}

void KvSelector::Shutdown() {
  std::vector<std::thread> closers;
  absl::flat_hash_map<std::string, std::unique_ptr<SelectorChannelServer>> links;
  {
    absl::MutexLock lock(&mutex_);
    if (shut_down_) return;
    shut_down_ = true;
    links.swap(links_);
    closers.swap(closers_);
  }
  stop_watching_.Notify();
  if (watcher_.joinable()) watcher_.join();
  for (auto& [id, server] : links) server->Stop("the selector is shutting down");
  for (std::thread& closer : closers) closer.join();
  if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  if (member_ != nullptr) member_->Stop(/*deregister=*/true);
  LOG(INFO) << "selector " << options_.member_id << " stopped";
}

}  // namespace asyncspade
