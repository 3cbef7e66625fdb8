#include "services/decode_worker/service/remote_selector_pool.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/data_plane/channel_factory.h"
#include "glog/logging.h"

namespace asyncspade {
namespace {

namespace sv1 = selector::v1;

std::string Describe(const control::v1::SelectorLink& link) {
  return absl::StrCat("selector ", link.selector_id(), " (layers ", link.layers().first(), "-", link.layers().last(),
                      ", channel ", link.channel_id(), " epoch ", link.epoch(), ")");
}

bool SameLink(const control::v1::SelectorLink& a, const control::v1::SelectorLink& b) {
  return a.channel_id() == b.channel_id() && a.epoch() == b.epoch() && a.selector_id() == b.selector_id() &&
         a.layers().first() == b.layers().first() && a.layers().last() == b.layers().last() &&
         a.transport() == b.transport();
}

}  // namespace

RemoteSelectorPool::RemoteSelectorPool(RemoteSelectorPoolOptions options)
    : options_(std::move(options)),
      kv_row_floats_(options_.hello.num_kv_heads() * options_.hello.head_dim()),
      layer_links_(static_cast<size_t>(std::max(options_.num_layers, 0))),
      indexed_(static_cast<size_t>(std::max(options_.num_layers, 0))),
      indexed_for_(static_cast<size_t>(std::max(options_.num_layers, 0)), nullptr) {
  CHECK(options_.run_on_decode_loop) << "RemoteSelectorPool needs run_on_decode_loop";
  CHECK(options_.key_reader != nullptr) << "RemoteSelectorPool needs a key_reader";
  CHECK(options_.store != nullptr) << "RemoteSelectorPool needs a rendezvous store";
}

RemoteSelectorPool::~RemoteSelectorPool() { Shutdown(); }

absl::Status RemoteSelectorPool::ApplyAssignment(const control::v1::Assignment& assignment) {
  absl::flat_hash_map<std::string, control::v1::SelectorLink> desired;
  for (const control::v1::SelectorLink& link : assignment.links()) {
    if (link.decode_worker_id() != options_.worker_id) continue;
    if (link.layers().first() < 0 || link.layers().first() > link.layers().last() ||
        link.layers().last() >= options_.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("assignment ", assignment.version(), ": link ", Describe(link),
                                                     " names layers outside the model's [0, ", options_.num_layers - 1,
                                                     "]"));
    }
    if (absl::Status valid = data_plane::ParseTransport(link.transport()).status(); !valid.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("assignment ", assignment.version(), ": link ", Describe(link),
                                                     ": ", valid.message()));
    }
    desired[link.channel_id()] = link;
  }
  absl::MutexLock lock(&mutex_);
  if (shut_down_) return absl::FailedPreconditionError("the selector pool is shut down");
  std::vector<std::shared_ptr<Link>> withdrawn;
  for (auto& [id, link] : links_) {
    auto it = desired.find(id);
    if (it == desired.end() || !SameLink(it->second, link->spec)) withdrawn.push_back(link);
  }
  for (const auto& link : withdrawn) {
    LOG(INFO) << options_.worker_id << ": closing link to " << Describe(link->spec);
    links_.erase(link->spec.channel_id());
    Withdraw(link);
  }
  for (auto& [id, spec] : desired) {
    if (links_.contains(id)) continue;
    auto link = std::make_shared<Link>();
    link->spec = spec;
    links_[id] = link;
    LOG(INFO) << options_.worker_id << ": opening link to " << Describe(spec);
    link->worker = std::thread([this, link] { Connect(link); });
  }
  applied_version_ = assignment.version();
  return absl::OkStatus();
}

uint64_t RemoteSelectorPool::applied_assignment_version() const {
  absl::MutexLock lock(&mutex_);
  return applied_version_;
}

void RemoteSelectorPool::Withdraw(const std::shared_ptr<Link>& link) {
  link->cancelled.Notify();
  link->state = LinkState::kClosed;
  for (auto& serving : layer_links_) {
    if (serving == link) serving.reset();
  }
  closers_.emplace_back([link] {
    if (link->worker.joinable()) link->worker.join();
    if (link->channel != nullptr) {
      sv1::Error goodbye;
      goodbye.set_sequence_id(-1);
      goodbye.set_message("the controller withdrew this link");
      link->channel->Send(sv1::MESSAGE_TAG_GOODBYE, selector_wire::Encode(goodbye)).IgnoreError();
      link->channel->Close();
    }
  });
}

void RemoteSelectorPool::Shutdown() {
  std::vector<std::thread> closers;
  {
    absl::MutexLock lock(&mutex_);
    if (!shut_down_) {
      shut_down_ = true;
      for (auto& [id, link] : links_) Withdraw(link);
      links_.clear();
    }
    closers.swap(closers_);
  }
  for (std::thread& closer : closers) closer.join();
}

void RemoteSelectorPool::Connect(const std::shared_ptr<Link>& link) {
  data_plane::ChannelSpec spec;
  spec.channel_id = link->spec.channel_id();
  spec.epoch = link->spec.epoch();
  spec.role = data_plane::ChannelRole::kDecodeWorker;
  spec.store = options_.store;
  spec.host = options_.host;
  spec.connect_timeout = options_.connect_timeout;
  spec.keepalive_interval = options_.keepalive_interval;
  spec.peer_timeout = options_.peer_timeout;
  const data_plane::Transport transport = data_plane::ParseTransport(link->spec.transport()).value_or(
      data_plane::Transport::kGloo);

  std::unique_ptr<data_plane::Channel> channel;
  while (!link->cancelled.HasBeenNotified()) {
    absl::StatusOr<std::unique_ptr<data_plane::Channel>> created = data_plane::CreateChannel(spec, transport);
    if (created.ok()) {
      channel = std::move(created).value();
      break;
    }
    const absl::StatusCode code = created.status().code();
    if (code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kUnimplemented) {
      MarkFailed(link, created.status());
      return;
    }
    // The selector may not have received its links yet: keep meeting it at this epoch until the
    // controller withdraws the link.
    LOG(WARNING) << options_.worker_id << ": link to " << Describe(link->spec) << " not up yet: "
                 << created.status().message() << "; retrying";
    link->cancelled.WaitForNotificationWithTimeout(absl::Milliseconds(200));
  }
  if (channel == nullptr) return;

  data_plane::AsyncChannelOptions async_options;
  std::weak_ptr<Link> weak = link;
  async_options.on_message = [this, weak](data_plane::Message message) {
    if (std::shared_ptr<Link> alive = weak.lock()) OnMessage(alive, std::move(message));
  };
  auto async = std::make_unique<data_plane::AsyncChannel>(std::move(channel), std::move(async_options));
  sv1::Hello hello = options_.hello;
  *hello.mutable_layers() = link->spec.layers();
  hello.set_num_layers(options_.num_layers);
  if (absl::Status sent = async->Send(sv1::MESSAGE_TAG_HELLO, selector_wire::Encode(hello)); !sent.ok()) {
    MarkFailed(link, sent);
    return;
  }
  {
    absl::MutexLock lock(&mutex_);
    if (link->state != LinkState::kConnecting) {
      async->Close();
      return;
    }
    link->channel = std::move(async);
  }
  LOG(INFO) << options_.worker_id << ": connected to " << Describe(link->spec);
  options_.run_on_decode_loop([this, link] { Activate(link); });
}

void RemoteSelectorPool::Activate(const std::shared_ptr<Link>& link) {
  {
    absl::MutexLock lock(&mutex_);
    if (link->state != LinkState::kConnecting || shut_down_) return;
    link->state = LinkState::kServing;
  }
  // Re-attach: the new selector gets every known sequence's keys before any SELECT can follow
  // (both are queued on this thread, on one ordered channel).
  int64_t copied = 0;
  for (int layer = link->spec.layers().first(); layer <= link->spec.layers().last(); ++layer) {
    indexed_[layer].clear();
    indexed_for_[layer] = link.get();
    for (const auto& [sequence_id, length] : known_length_) {
      if (EnsureIndexed(link, layer, sequence_id, length)) copied += length;
    }
  }
  absl::MutexLock lock(&mutex_);
  if (link->state != LinkState::kServing) return;
  for (int layer = link->spec.layers().first(); layer <= link->spec.layers().last(); ++layer) {
    layer_links_[layer] = link;
  }
  LOG(INFO) << options_.worker_id << ": " << Describe(link->spec) << " serving; re-attached "
            << known_length_.size() << " sequences (" << copied << " keys)";
}

void RemoteSelectorPool::MarkFailed(const std::shared_ptr<Link>& link, const absl::Status& why) {
  absl::MutexLock lock(&mutex_);
  if (link->state == LinkState::kFailed || link->state == LinkState::kClosed) return;
  link->state = LinkState::kFailed;
  for (auto& serving : layer_links_) {
    if (serving == link) serving.reset();
  }
  ++link_failures_total_;
  LOG(WARNING) << options_.worker_id << ": " << Describe(link->spec) << " failed: " << why.message()
               << "; its layers attend densely until the controller assigns a replacement";
}

std::shared_ptr<RemoteSelectorPool::Link> RemoteSelectorPool::ServingLink(int layer) const {
  if (layer < 0 || layer >= options_.num_layers) return nullptr;
  absl::MutexLock lock(&mutex_);
  const std::shared_ptr<Link>& link = layer_links_[layer];
  if (link == nullptr || link->state != LinkState::kServing) return nullptr;
  return link;
}

bool RemoteSelectorPool::ServesLayer(int layer) const { return ServingLink(layer) != nullptr; }

bool RemoteSelectorPool::Send(const std::shared_ptr<Link>& link, sv1::MessageTag tag, selector_wire::Parts parts) {
  const absl::Status sent = link->channel->Send(tag, std::move(parts));
  if (sent.ok()) return true;
  // A full queue is the selector falling behind, not dying: this message is dropped.
  if (sent.code() != absl::StatusCode::kResourceExhausted) MarkFailed(link, sent);
  return false;
}

bool RemoteSelectorPool::SendKeys(const std::shared_ptr<Link>& link, int layer, int64_t sequence_id, int32_t start,
                                  int32_t num_tokens, const float* keys) {
  sv1::AppendKeys header;
  header.set_layer(layer);
  header.set_sequence_id(sequence_id);
  header.set_start_position(start);
  header.set_num_tokens(num_tokens);
  selector_wire::Parts parts = selector_wire::Encode(header);
  selector_wire::AppendTensor(&parts, keys, static_cast<size_t>(num_tokens) * kv_row_floats_);
  return Send(link, sv1::MESSAGE_TAG_APPEND_KEYS, std::move(parts));
}

bool RemoteSelectorPool::EnsureIndexed(const std::shared_ptr<Link>& link, int layer, int64_t sequence_id,
                                       int32_t position) {
  if (indexed_for_[layer] != link.get()) {
    indexed_[layer].clear();
    indexed_for_[layer] = link.get();
  }
  auto& indexed = indexed_[layer];
  int32_t have = 0;
  if (auto it = indexed.find(sequence_id); it != indexed.end()) have = it->second;
  if (have > position) {
    // The sequence starts over (recomputed after preemption): drop its index on this selector (all
    // of the link's layers) and rebuild it.
    sv1::Detach detach;
    detach.add_sequence_ids(sequence_id);
    if (!Send(link, sv1::MESSAGE_TAG_DETACH, selector_wire::Encode(detach))) return false;
    for (int l = link->spec.layers().first(); l <= link->spec.layers().last(); ++l) {
      if (indexed_for_[l] == link.get()) indexed_[l].erase(sequence_id);
    }
    have = 0;
  }
  if (have < position) {
    const int32_t rows_per_message = static_cast<int32_t>(
        std::max<uint64_t>(1, options_.max_append_bytes / (sizeof(float) * std::max(kv_row_floats_, 1))));
    std::vector<float> keys;
    for (int32_t start = have; start < position; start += rows_per_message) {
      const int32_t n = std::min(rows_per_message, position - start);
      keys.resize(static_cast<size_t>(n) * kv_row_floats_);
      if (!options_.key_reader->ReadKeys(sequence_id, layer, start, n, keys.data())) {
        LOG_EVERY_N(WARNING, 100) << options_.worker_id << ": cannot read keys [" << start << ", " << start + n
                                  << ") of sequence " << sequence_id << " layer " << layer
                                  << " from the KV cache to attach it to " << Describe(link->spec);
        return false;
      }
      if (!SendKeys(link, layer, sequence_id, start, n, keys.data())) return false;
      indexed[sequence_id] = start + n;
      reattached_keys_total_ += n;
    }
  }
  indexed[sequence_id] = position;
  return true;
}

void RemoteSelectorPool::NoteKnown(int64_t sequence_id, int32_t length) {
  int32_t& known = known_length_[sequence_id];
  known = std::max(known, length);
}

void RemoteSelectorPool::AppendKeys(int layer, int64_t sequence_id, int32_t start_position, int32_t num_tokens,
                                    const float* keys) {
  if (num_tokens <= 0) return;
  {
    absl::MutexLock lock(&selections_mutex_);
    attached_.insert(sequence_id);
    if (start_position == 0) {
      // The sequence starts (or starts over, recomputed after a preemption): replies to SELECTs of
      // an earlier run may name positions it does not have yet.
      restarted_at_step_[sequence_id] = current_step_;
      selections_.erase({sequence_id, layer});
    }
  }
  if (start_position == 0) {
    // Every layer of a step reports the same range, so assigning is idempotent.
    known_length_[sequence_id] = num_tokens;
  } else {
    NoteKnown(sequence_id, start_position + num_tokens);
  }
  std::shared_ptr<Link> link = ServingLink(layer);
  if (link == nullptr) return;
  if (!EnsureIndexed(link, layer, sequence_id, start_position)) return;
  if (SendKeys(link, layer, sequence_id, start_position, num_tokens, keys)) {
    indexed_[layer][sequence_id] = start_position + num_tokens;
  }
}

void RemoteSelectorPool::Submit(SelectRequest request) {
  const size_t n = request.sequence_ids.size();
  for (size_t i = 0; i < n; ++i) NoteKnown(request.sequence_ids[i], request.positions[i] + 1);
  {
    absl::MutexLock lock(&selections_mutex_);
    for (int64_t id : request.sequence_ids) attached_.insert(id);
  }
  std::shared_ptr<Link> link = ServingLink(request.layer);
  if (link == nullptr || n == 0) {
    selects_dropped_total_ += n > 0 ? 1 : 0;
    return;
  }
  const size_t key_row = static_cast<size_t>(kv_row_floats_);
  const size_t query_row = static_cast<size_t>(options_.hello.num_heads()) * options_.hello.head_dim();
  CHECK_EQ(request.new_keys.size(), n * key_row) << "SelectRequest.new_keys has the wrong size";
  CHECK_EQ(request.predicted_queries.size(), n * query_row) << "SelectRequest.predicted_queries has the wrong size";
  CHECK(request.budgets.empty() || request.budgets.size() == n) << "SelectRequest.budgets has the wrong size";

  sv1::Select header;
  header.set_layer(request.layer);
  header.set_step(request.step);
  std::vector<float> keys, queries;
  keys.reserve(n * key_row);
  queries.reserve(n * query_row);
  std::vector<size_t> sent;
  for (size_t i = 0; i < n; ++i) {
    // A sequence the selector cannot be brought up to date for is left out of this step.
    if (!EnsureIndexed(link, request.layer, request.sequence_ids[i], request.positions[i])) continue;
    header.add_sequence_ids(request.sequence_ids[i]);
    header.add_positions(request.positions[i]);
    if (!request.budgets.empty()) header.add_budgets(request.budgets[i]);
    keys.insert(keys.end(), request.new_keys.begin() + i * key_row, request.new_keys.begin() + (i + 1) * key_row);
    queries.insert(queries.end(), request.predicted_queries.begin() + i * query_row,
                   request.predicted_queries.begin() + (i + 1) * query_row);
    sent.push_back(i);
  }
  if (sent.empty()) {
    ++selects_dropped_total_;
    return;
  }
  selector_wire::Parts parts = selector_wire::Encode(header);
  selector_wire::AppendTensor(&parts, keys.data(), keys.size());
  selector_wire::AppendTensor(&parts, queries.data(), queries.size());
  auto& indexed = indexed_[request.layer];
  if (!Send(link, sv1::MESSAGE_TAG_SELECT, std::move(parts))) {
    ++selects_dropped_total_;
    // Whether the selector got the new keys is unknown: re-check them on the next use.
    for (size_t i : sent) indexed.erase(request.sequence_ids[i]);
    return;
  }
  ++selects_sent_total_;
  ++link->selects_sent;
  for (size_t i : sent) indexed[request.sequence_ids[i]] = request.positions[i] + 1;
}

void RemoteSelectorPool::Detach(int64_t sequence_id) {
  known_length_.erase(sequence_id);
  for (auto& indexed : indexed_) indexed.erase(sequence_id);
  {
    absl::MutexLock lock(&selections_mutex_);
    attached_.erase(sequence_id);
    restarted_at_step_.erase(sequence_id);
    for (int layer = 0; layer < options_.num_layers; ++layer) selections_.erase({sequence_id, layer});
  }
  std::vector<std::shared_ptr<Link>> serving;
  {
    absl::MutexLock lock(&mutex_);
    for (auto& [id, link] : links_) {
      if (link->state == LinkState::kServing) serving.push_back(link);
    }
  }
  sv1::Detach detach;
  detach.add_sequence_ids(sequence_id);
  for (const auto& link : serving) Send(link, sv1::MESSAGE_TAG_DETACH, selector_wire::Encode(detach));
}

std::shared_ptr<const Selection> RemoteSelectorPool::Latest(int64_t sequence_id, int layer) {
  absl::MutexLock lock(&selections_mutex_);
  auto it = selections_.find({sequence_id, layer});
  return it == selections_.end() ? nullptr : it->second;
}

void RemoteSelectorPool::Poll() {
  std::vector<std::shared_ptr<Link>> serving;
  {
    absl::MutexLock lock(&mutex_);
    for (auto& [id, link] : links_) {
      if (link->state == LinkState::kServing) serving.push_back(link);
    }
  }
  for (const auto& link : serving) {
    if (absl::Status health = link->channel->health(); !health.ok()) MarkFailed(link, health);
  }
  std::vector<std::pair<std::weak_ptr<Link>, int64_t>> errored;
  {
    absl::MutexLock lock(&selections_mutex_);
    errored.swap(errored_);
  }
  for (auto& [weak, sequence_id] : errored) {
    std::shared_ptr<Link> link = weak.lock();
    if (link == nullptr) continue;
    // Mark the selector's index as ahead of anything the worker will send: the next use of the
    // sequence on this link then detaches it there and rebuilds it from the KV cache.
    for (int layer = link->spec.layers().first(); layer <= link->spec.layers().last(); ++layer) {
      if (indexed_for_[layer] == link.get()) indexed_[layer][sequence_id] = INT32_MAX;
    }
  }
}

void RemoteSelectorPool::OnMessage(const std::shared_ptr<Link>& link, data_plane::Message message) {
  switch (message.tag) {
    case sv1::MESSAGE_TAG_SELECTION: {
      sv1::Selection header;
      absl::Status status = selector_wire::DecodeHeader(message, 2, &header);
      const size_t n = static_cast<size_t>(header.sequence_ids_size());
      const int kv_heads = options_.hello.num_kv_heads();
      if (status.ok() && (static_cast<size_t>(header.for_positions_size()) != n ||
                          static_cast<size_t>(header.counts_size()) != n * kv_heads)) {
        status = absl::InvalidArgumentError("SELECTION: for_positions/counts do not match sequence_ids");
      }
      const size_t total = message.parts.size() == 2 ? message.parts[1].size() / sizeof(int32_t) : 0;
      const size_t per_sequence = n * kv_heads;
      if (status.ok() && (n == 0 || total % per_sequence != 0)) {
        status = absl::InvalidArgumentError("SELECTION: the positions tensor is not [n][kv_heads][budget]");
      }
      std::vector<int32_t> positions;
      if (status.ok()) status = selector_wire::DecodeTensor(message, 1, total, &positions);
      if (!status.ok() || header.layer() < link->spec.layers().first() || header.layer() > link->spec.layers().last()) {
        ++selector_errors_total_;
        LOG_EVERY_N(WARNING, 100) << options_.worker_id << ": bad SELECTION from " << Describe(link->spec) << ": "
                                  << (status.ok() ? absl::StrCat("layer ", header.layer(), " is not on this link")
                                                  : std::string(status.message()));
        return;
      }
      const int budget = static_cast<int>(total / per_sequence);
      ++selections_received_total_;
      ++link->selections_received;
      absl::MutexLock lock(&selections_mutex_);
      for (size_t i = 0; i < n; ++i) {
        const int64_t sequence_id = header.sequence_ids(static_cast<int>(i));
        if (!attached_.contains(sequence_id)) continue;  // finished meanwhile
        if (auto restart = restarted_at_step_.find(sequence_id);
            restart != restarted_at_step_.end() && header.step() < restart->second) {
          continue;  // made for the sequence's previous run
        }
        auto selection = std::make_shared<Selection>();
        selection->for_position = header.for_positions(static_cast<int>(i));
        selection->step = header.step();
        selection->budget = budget;
        selection->indices.assign(positions.begin() + i * kv_heads * budget,
                                  positions.begin() + (i + 1) * kv_heads * budget);
        selection->counts.assign(header.counts().begin() + i * kv_heads, header.counts().begin() + (i + 1) * kv_heads);
        std::shared_ptr<const Selection>& slot = selections_[{sequence_id, header.layer()}];
        // Replies of one channel arrive in order; a late one from a replaced channel must not
        // overwrite a newer one.
        if (slot == nullptr || slot->step <= selection->step) slot = std::move(selection);
      }
      return;
    }
    case sv1::MESSAGE_TAG_ERROR: {
      sv1::Error error;
      if (!selector_wire::DecodeHeader(message, 1, &error).ok()) error.set_sequence_id(-1);
      ++selector_errors_total_;
      if (error.sequence_id() < 0) {
        MarkFailed(link, absl::InternalError(absl::StrCat("the selector refused the channel: ", error.message())));
        return;
      }
      LOG_EVERY_N(WARNING, 20) << options_.worker_id << ": " << Describe(link->spec) << " reports for sequence "
                               << error.sequence_id() << ": " << error.message() << " (re-attaching it)";
      absl::MutexLock lock(&selections_mutex_);
      errored_.emplace_back(link, error.sequence_id());
      return;
    }
    case sv1::MESSAGE_TAG_GOODBYE: {
      sv1::Error goodbye;
      selector_wire::DecodeHeader(message, 1, &goodbye).IgnoreError();
      MarkFailed(link, absl::UnavailableError(absl::StrCat("the selector closed the link: ", goodbye.message())));
      return;
    }
    default:
      ++selector_errors_total_;
      LOG_EVERY_N(WARNING, 100) << options_.worker_id << ": unexpected " << selector_wire::TagName(message.tag)
                                << " message from " << Describe(link->spec);
  }
}

RemoteSelectorPoolStats RemoteSelectorPool::stats() const {
  RemoteSelectorPoolStats stats;
  {
    absl::MutexLock lock(&mutex_);
    stats.links_assigned = static_cast<int>(links_.size());
    for (const auto& [id, link] : links_) {
      if (link->state != LinkState::kServing) continue;
      ++stats.links_serving;
      stats.outstanding_selects += link->selects_sent - link->selections_received;
    }
    stats.layers_total = options_.num_layers;
    for (const auto& link : layer_links_) stats.layers_served += link != nullptr ? 1 : 0;
  }
  stats.link_failures_total = link_failures_total_;
  stats.selects_sent_total = selects_sent_total_;
  stats.selections_received_total = selections_received_total_;
  stats.selector_errors_total = selector_errors_total_;
  stats.selects_dropped_total = selects_dropped_total_;
  stats.reattached_keys_total = reattached_keys_total_;
  return stats;
}

}  // namespace asyncspade
