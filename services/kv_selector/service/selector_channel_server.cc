#include "services/kv_selector/service/selector_channel_server.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/data_plane/channel_factory.h"
#include "common/status.h"
#include "glog/logging.h"
#include "services/kv_selector/service/selector_wire.h"

namespace asyncspade {
namespace {

namespace sv1 = selector::v1;

// How often a serving thread blocked in Recv looks at its stop flag.
constexpr absl::Duration kRecvSlice = absl::Milliseconds(500);

absl::StatusOr<kernels::GroupAggregation> AggregationOf(sv1::ScoreAggregation aggregation) {
  switch (aggregation) {
    case sv1::SCORE_AGGREGATION_UNSPECIFIED:
    case sv1::SCORE_AGGREGATION_SUM: return kernels::GroupAggregation::kSum;
    case sv1::SCORE_AGGREGATION_MAX: return kernels::GroupAggregation::kMax;
    case sv1::SCORE_AGGREGATION_SOFTMAX_SUM: return kernels::GroupAggregation::kSoftmaxSum;
    default: break;
  }
  return absl::InvalidArgumentError(absl::StrCat("aggregation ", static_cast<int>(aggregation), " is unknown"));
}

// GOODBYE with the reason (sequence_id -1: the whole link). Best effort: the channel may be gone.
void SayGoodbye(data_plane::Channel& channel, const std::string& why) {
  sv1::Error goodbye;
  goodbye.set_sequence_id(-1);
  goodbye.set_message(why);
  const selector_wire::Parts parts = selector_wire::Encode(goodbye);
  const data_plane::Buffer buffer{parts[0].data(), parts[0].size()};
  channel.Send(sv1::MESSAGE_TAG_GOODBYE, {&buffer, 1}).IgnoreError();
}

}  // namespace

SelectorChannelServer::SelectorChannelServer(control::v1::SelectorLink link, SelectorChannelOptions options)
    : link_(std::move(link)), options_(std::move(options)) {
  CHECK(options_.store != nullptr) << "SelectorChannelServer needs a rendezvous store";
  CHECK(options_.counters != nullptr) << "SelectorChannelServer needs counters";
}

SelectorChannelServer::~SelectorChannelServer() { Stop("the selector is shutting down"); }

void SelectorChannelServer::Start() { thread_ = std::thread([this] { Run(); }); }

std::string SelectorChannelServer::Where() const {
  return absl::StrCat(options_.selector_id, ": link from decode worker ", link_.decode_worker_id(), " (layers ",
                      link_.layers().first(), "-", link_.layers().last(), ", channel ", link_.channel_id(), " epoch ",
                      link_.epoch(), ")");
}

void SelectorChannelServer::Stop(const std::string& why) {
  data_plane::Channel* goodbye_channel = nullptr;
  {
    absl::MutexLock lock(&mutex_);
    if (stop_reason_.empty()) stop_reason_ = why;
    if (channel_ != nullptr && !said_goodbye_ && !ended_) {
      said_goodbye_ = true;
      goodbye_channel = channel_.get();  // lives as long as this object
    }
  }
  // The goodbye goes out before the serving thread learns of the stop: once it does, it closes
  // the channel itself, and a goodbye sent after that would be lost (the worker would see only
  // the dropped channel). Without a published channel yet, the serving thread says it (Run).
  if (goodbye_channel != nullptr) SayGoodbye(*goodbye_channel, why);
  {
    absl::MutexLock lock(&mutex_);
    if (!stop_.HasBeenNotified()) stop_.Notify();
  }
  // Also unblocks the serving thread's Recv.
  if (goodbye_channel != nullptr) goodbye_channel->Close();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

bool SelectorChannelServer::serving() const {
  absl::MutexLock lock(&mutex_);
  return index_ != nullptr && !ended_;
}

bool SelectorChannelServer::ended() const { return ended_; }

int64_t SelectorChannelServer::attached_sequences() const {
  absl::MutexLock lock(&mutex_);
  return index_ != nullptr ? index_->num_sequences() : 0;
}

int64_t SelectorChannelServer::indexed_keys() const {
  absl::MutexLock lock(&mutex_);
  return index_ != nullptr ? index_->indexed_keys() : 0;
}

void SelectorChannelServer::Run() {
  data_plane::ChannelSpec spec;
  spec.channel_id = link_.channel_id();
  spec.epoch = link_.epoch();
  spec.role = data_plane::ChannelRole::kSelector;
  spec.store = options_.store;
  spec.host = options_.host;
  spec.connect_timeout = options_.connect_timeout;
  spec.keepalive_interval = options_.keepalive_interval;
  spec.peer_timeout = options_.peer_timeout;
  absl::StatusOr<data_plane::Transport> transport = data_plane::ParseTransport(link_.transport());

  std::unique_ptr<data_plane::Channel> channel;
  while (!stop_.HasBeenNotified()) {
    absl::StatusOr<std::unique_ptr<data_plane::Channel>> created =
        transport.ok() ? data_plane::CreateChannel(spec, *transport) : transport.status();
    if (created.ok()) {
      channel = std::move(created).value();
      break;
    }
    const absl::StatusCode code = created.status().code();
    if (code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kUnimplemented) {
      LOG(ERROR) << Where() << ": cannot open the channel: " << created.status().message();
      ++options_.counters->channel_failures_total;
      ended_ = true;
      return;
    }
    // The worker may not have its links yet: keep meeting it at this epoch until withdrawn.
    LOG(WARNING) << Where() << ": not connected yet: " << created.status().message() << "; retrying";
    stop_.WaitForNotificationWithTimeout(absl::Milliseconds(200));
  }
  {
    absl::MutexLock lock(&mutex_);
    if (channel == nullptr || stop_.HasBeenNotified()) {
      if (channel != nullptr) {
        // Stopped while connecting: Stop() found no channel to say goodbye on.
        SayGoodbye(*channel, stop_reason_);
        channel->Close();
      }
      said_goodbye_ = true;
      ended_ = true;
      return;
    }
    channel_ = std::move(channel);
    serving_channel_ = channel_.get();
  }
  LOG(INFO) << Where() << ": connected";

  while (true) {
    absl::StatusOr<data_plane::Message> message = serving_channel_->Recv(kRecvSlice);
    if (!message.ok()) {
      if (message.status().code() == absl::StatusCode::kDeadlineExceeded && !stop_.HasBeenNotified()) continue;
      if (!stop_.HasBeenNotified()) {
        ++options_.counters->channel_failures_total;
        LOG(WARNING) << Where() << ": channel ended: " << message.status().message()
                     << "; dropping its sequences";
      }
      break;
    }
    if (message->tag == sv1::MESSAGE_TAG_GOODBYE) {
      sv1::Error goodbye;
      selector_wire::DecodeHeader(*message, 1, &goodbye).IgnoreError();
      LOG(INFO) << Where() << ": the decode worker closed the link (" << goodbye.message() << ")";
      break;
    }
    if (absl::Status handled = Handle(*std::move(message)); !handled.ok()) {
      if (!stop_.HasBeenNotified()) {
        ++options_.counters->channel_failures_total;
        LOG(WARNING) << Where() << ": channel failed: " << handled.message() << "; dropping its sequences";
      }
      break;
    }
  }
  // No query state lives here and the keys are the worker's: dropping them is all the cleanup.
  // A stop Stop() could not say goodbye for (it found no channel yet) is said here.
  bool say_goodbye = false;
  std::string goodbye_reason;
  {
    absl::MutexLock lock(&mutex_);
    index_.reset();
    say_goodbye = stop_.HasBeenNotified() && !said_goodbye_;
    goodbye_reason = stop_reason_;
    said_goodbye_ = true;
    ended_ = true;
  }
  if (say_goodbye) SayGoodbye(*serving_channel_, goodbye_reason);
  serving_channel_->Close();
}

absl::Status SelectorChannelServer::Handle(data_plane::Message message) {
  switch (message.tag) {
    case sv1::MESSAGE_TAG_HELLO: return HandleHello(message);
    case sv1::MESSAGE_TAG_APPEND_KEYS: return HandleAppendKeys(message);
    case sv1::MESSAGE_TAG_SELECT: return HandleSelect(message);
    case sv1::MESSAGE_TAG_DETACH: return HandleDetach(message);
    default: break;
  }
  return SendError(-1, absl::StrCat("unexpected ", selector_wire::TagName(message.tag),
                                    " message from the decode worker; it was ignored"));
}

absl::Status SelectorChannelServer::SendError(int64_t sequence_id, const std::string& text) {
  ++options_.counters->errors_sent_total;
  LOG_EVERY_N(WARNING, 50) << Where() << ": " << (sequence_id >= 0 ? absl::StrCat("sequence ", sequence_id, ": ") : "")
                           << text;
  sv1::Error error;
  error.set_sequence_id(sequence_id);
  error.set_message(text);
  const selector_wire::Parts parts = selector_wire::Encode(error);
  const data_plane::Buffer buffer{parts[0].data(), parts[0].size()};
  return serving_channel_->Send(sv1::MESSAGE_TAG_ERROR, {&buffer, 1});
}

absl::Status SelectorChannelServer::HandleHello(const data_plane::Message& message) {
  sv1::Hello hello;
  if (absl::Status s = selector_wire::DecodeHeader(message, 1, &hello); !s.ok()) return SendError(-1, std::string(s.message()));
  std::string problem;
  if (hello.num_layers() <= 0 || hello.num_heads() <= 0 || hello.num_kv_heads() <= 0 || hello.head_dim() <= 0 ||
      hello.num_heads() % hello.num_kv_heads() != 0) {
    problem = absl::StrCat("HELLO geometry is invalid: num_layers ", hello.num_layers(), ", num_heads ",
                           hello.num_heads(), ", num_kv_heads ", hello.num_kv_heads(), ", head_dim ", hello.head_dim(),
                           " (all > 0, num_heads a multiple of num_kv_heads)");
  } else if (hello.layers().first() != link_.layers().first() || hello.layers().last() != link_.layers().last() ||
             hello.layers().last() >= hello.num_layers()) {
    problem = absl::StrCat("HELLO names layers ", hello.layers().first(), "-", hello.layers().last(),
                           " but the controller assigned layers ", link_.layers().first(), "-", link_.layers().last(),
                           " of ", hello.num_layers(), " to this link");
  } else if (hello.dtype() != sv1::TENSOR_DTYPE_UNSPECIFIED && hello.dtype() != sv1::TENSOR_DTYPE_F32) {
    problem = "HELLO asks for bf16 keys; this selector takes float32 keys (TENSOR_DTYPE_F32)";
  }
  selection::SelectionParams params;
  params.budget = hello.budget();
  params.sinks = hello.sinks();
  params.recent = hello.recent();
  absl::StatusOr<kernels::GroupAggregation> aggregation = AggregationOf(hello.aggregation());
  if (problem.empty() && !aggregation.ok()) problem = absl::StrCat("HELLO: ", aggregation.status().message());
  if (problem.empty()) {
    params.aggregation = *aggregation;
    if (absl::Status valid = params.Validate(); !valid.ok()) problem = absl::StrCat("HELLO: ", valid.message());
  }
  selection::KeyIndexShape shape;
  shape.num_layers = hello.num_layers();
  shape.num_q_heads = hello.num_heads();
  shape.num_kv_heads = hello.num_kv_heads();
  shape.head_dim = hello.head_dim();
  shape.max_bytes = options_.max_index_bytes;
  if (problem.empty()) {
    if (absl::Status valid = shape.Validate(); !valid.ok()) problem = absl::StrCat("HELLO: ", valid.message());
  }
  if (!problem.empty()) return SendError(-1, problem);
  hello_ = hello;
  params_ = params;
  auto index = std::make_shared<selection::KeyIndex>(shape);
  absl::MutexLock lock(&mutex_);
  index_ = std::move(index);
  LOG(INFO) << Where() << ": HELLO: " << hello.num_heads() << " heads / " << hello.num_kv_heads() << " KV heads x "
            << hello.head_dim() << ", budget " << hello.budget() << ", sinks " << hello.sinks() << ", recent "
            << hello.recent();
  return absl::OkStatus();
}

absl::Status SelectorChannelServer::HandleAppendKeys(const data_plane::Message& message) {
  sv1::AppendKeys header;
  if (absl::Status s = selector_wire::DecodeHeader(message, 2, &header); !s.ok()) return SendError(-1, std::string(s.message()));
  std::shared_ptr<selection::KeyIndex> index;
  {
    absl::MutexLock lock(&mutex_);
    index = index_;
  }
  if (index == nullptr) return SendError(header.sequence_id(), "APPEND_KEYS before HELLO");
  if (header.layer() < link_.layers().first() || header.layer() > link_.layers().last()) {
    return SendError(header.sequence_id(), absl::StrCat("APPEND_KEYS for layer ", header.layer(),
                                                        ", which this link does not carry"));
  }
  if (header.num_tokens() <= 0) {
    return SendError(header.sequence_id(), absl::StrCat("APPEND_KEYS with num_tokens ", header.num_tokens()));
  }
  std::vector<float> keys;
  const size_t count = static_cast<size_t>(header.num_tokens()) * hello_.num_kv_heads() * hello_.head_dim();
  if (absl::Status s = selector_wire::DecodeTensor(message, 1, count, &keys); !s.ok()) {
    return SendError(header.sequence_id(), std::string(s.message()));
  }
  absl::Status appended = index->AppendKeys(header.sequence_id(), header.layer(), header.start_position(),
                                            header.num_tokens(), keys.data());
  if (!appended.ok()) {
    return SendError(header.sequence_id(), absl::StrCat("layer ", header.layer(), ": ", appended.message()));
  }
  return absl::OkStatus();
}

absl::Status SelectorChannelServer::HandleSelect(const data_plane::Message& message) {
  const absl::Time start = absl::Now();
  sv1::Select header;
  if (absl::Status s = selector_wire::DecodeHeader(message, 3, &header); !s.ok()) return SendError(-1, std::string(s.message()));
  std::shared_ptr<selection::KeyIndex> index;
  {
    absl::MutexLock lock(&mutex_);
    index = index_;
  }
  const int n = header.sequence_ids_size();
  if (index == nullptr) return SendError(-1, "SELECT before HELLO");
  if (header.positions_size() != n || (header.budgets_size() != 0 && header.budgets_size() != n)) {
    return SendError(-1, absl::StrCat("SELECT for layer ", header.layer(), ": ", n, " sequence_ids but ",
                                      header.positions_size(), " positions and ", header.budgets_size(), " budgets"));
  }
  if (header.layer() < link_.layers().first() || header.layer() > link_.layers().last()) {
    return SendError(-1, absl::StrCat("SELECT for layer ", header.layer(), ", which this link does not carry"));
  }
  const size_t key_row = static_cast<size_t>(hello_.num_kv_heads()) * hello_.head_dim();
  const size_t query_row = static_cast<size_t>(hello_.num_heads()) * hello_.head_dim();
  std::vector<float> keys, queries;
  absl::Status sizes = selector_wire::DecodeTensor(message, 1, n * key_row, &keys);
  if (sizes.ok()) sizes = selector_wire::DecodeTensor(message, 2, n * query_row, &queries);
  if (!sizes.ok()) return SendError(-1, std::string(sizes.message()));

  // Index the new keys first; a sequence whose key cannot be indexed is answered with an ERROR.
  std::vector<selection::SelectionQuery> batch;
  batch.reserve(n);
  for (int i = 0; i < n; ++i) {
    const int64_t sequence_id = header.sequence_ids(i);
    absl::Status appended =
        index->Append(sequence_id, header.layer(), header.positions(i), keys.data() + static_cast<size_t>(i) * key_row);
    if (!appended.ok()) {
      RETURN_IF_ERROR(SendError(sequence_id, absl::StrCat("layer ", header.layer(), ": ", appended.message())));
      continue;
    }
    selection::SelectionQuery query;
    query.sequence_id = sequence_id;
    query.layer = header.layer();
    query.query_position = header.positions(i) + 1;
    query.step = header.step();
    query.predicted_queries = queries.data() + static_cast<size_t>(i) * query_row;
    query.budget = header.budgets_size() > 0 ? header.budgets(i) : 0;
    batch.push_back(query);
  }
  std::vector<absl::StatusOr<Selection>> results = selection::SelectTopK(*index, batch, params_, &scratch_);

  sv1::Selection reply;
  reply.set_layer(header.layer());
  reply.set_step(header.step());
  std::vector<const Selection*> selected;
  int width = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i].ok()) {
      RETURN_IF_ERROR(SendError(batch[i].sequence_id,
                                absl::StrCat("layer ", header.layer(), ": ", results[i].status().message())));
      continue;
    }
    selected.push_back(&*results[i]);
    reply.add_sequence_ids(batch[i].sequence_id);
    reply.add_for_positions(batch[i].query_position);
    width = std::max(width, results[i]->budget);
  }
  if (selected.empty()) return absl::OkStatus();
  const int kv_heads = hello_.num_kv_heads();
  // Every sequence of the reply gets the same width: narrower budgets are padded with -1.
  std::vector<int32_t> positions(selected.size() * kv_heads * width, -1);
  for (size_t i = 0; i < selected.size(); ++i) {
    const Selection& s = *selected[i];
    for (int h = 0; h < kv_heads; ++h) {
      reply.add_counts(s.counts[h]);
      std::copy_n(s.indices.begin() + static_cast<size_t>(h) * s.budget, s.budget,
                  positions.begin() + (i * kv_heads + h) * width);
    }
  }
  selector_wire::Parts parts = selector_wire::Encode(reply);
  selector_wire::AppendTensor(&parts, positions.data(), positions.size());
  const data_plane::Buffer buffers[2] = {{parts[0].data(), parts[0].size()}, {parts[1].data(), parts[1].size()}};
  RETURN_IF_ERROR(serving_channel_->Send(sv1::MESSAGE_TAG_SELECTION, buffers));
  options_.counters->selections_total += static_cast<int64_t>(selected.size());
  ++options_.counters->select_messages_total;
  options_.counters->select_nanoseconds_total += absl::ToInt64Nanoseconds(absl::Now() - start);
  return absl::OkStatus();
}

absl::Status SelectorChannelServer::HandleDetach(const data_plane::Message& message) {
  sv1::Detach header;
  if (absl::Status s = selector_wire::DecodeHeader(message, 1, &header); !s.ok()) return SendError(-1, std::string(s.message()));
  std::shared_ptr<selection::KeyIndex> index;
  {
    absl::MutexLock lock(&mutex_);
    index = index_;
  }
  if (index == nullptr) return absl::OkStatus();
  for (int64_t sequence_id : header.sequence_ids()) index->Detach(sequence_id);
  return absl::OkStatus();
}

}  // namespace asyncspade
