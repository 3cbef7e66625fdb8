// The selector's end of a link (SelectorChannelServer) driven message by message from a raw
// worker-side channel over real Gloo on loopback: HELLO validation, APPEND_KEYS / SELECT /
// DETACH, per-sequence errors that never end the link, padding of mixed budgets, GOODBYE.
#include "services/kv_selector/service/selector_channel_server.h"

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "common/data_plane/channel_factory.h"
#include "common/data_plane/in_memory_rendezvous_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/kv_selector/service/selector_wire.h"

namespace asyncspade {
namespace {

namespace sv1 = selector::v1;
using ::testing::HasSubstr;

constexpr int kHeads = 4;
constexpr int kKvHeads = 2;
constexpr int kHeadDim = 8;
constexpr int kKeyRow = kKvHeads * kHeadDim;
constexpr int kQueryRow = kHeads * kHeadDim;

std::vector<float> RandomVector(size_t n, std::mt19937* rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = uniform(*rng);
  return v;
}

class SelectorChannelServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    link_.set_decode_worker_id("worker");
    link_.set_selector_id("selector-0");
    link_.mutable_layers()->set_first(1);
    link_.mutable_layers()->set_last(2);
    link_.set_channel_id("worker~selector-0");
    link_.set_epoch(4);
    link_.set_transport("gloo");
    SelectorChannelOptions options;
    options.selector_id = "selector-0";
    options.store = &store_;
    options.connect_timeout = absl::Seconds(5);
    options.counters = &counters_;
    server_ = std::make_unique<SelectorChannelServer>(link_, options);
    server_->Start();
    data_plane::ChannelSpec spec;
    spec.channel_id = link_.channel_id();
    spec.epoch = link_.epoch();
    spec.role = data_plane::ChannelRole::kDecodeWorker;
    spec.store = &store_;
    spec.connect_timeout = absl::Seconds(5);
    auto channel = data_plane::CreateChannel(spec, data_plane::Transport::kGloo);
    ASSERT_TRUE(channel.ok()) << channel.status();
    worker_ = *std::move(channel);
  }
  void TearDown() override {
    server_.reset();
    if (worker_ != nullptr) worker_->Close();
  }

  sv1::Hello GoodHello() {
    sv1::Hello hello;
    hello.set_num_layers(3);
    *hello.mutable_layers() = link_.layers();
    hello.set_num_heads(kHeads);
    hello.set_num_kv_heads(kKvHeads);
    hello.set_head_dim(kHeadDim);
    hello.set_budget(3);
    hello.set_sinks(1);
    hello.set_recent(2);
    hello.set_dtype(sv1::TENSOR_DTYPE_F32);
    return hello;
  }
  void Send(sv1::MessageTag tag, const google::protobuf::MessageLite& header, std::vector<std::vector<float>> tensors = {}) {
    selector_wire::Parts parts = selector_wire::Encode(header);
    for (const auto& t : tensors) selector_wire::AppendTensor(&parts, t.data(), t.size());
    std::vector<data_plane::Buffer> buffers;
    for (const auto& p : parts) buffers.push_back({p.data(), p.size()});
    ASSERT_TRUE(worker_->Send(tag, buffers).ok());
  }
  void AppendKeys(int layer, int64_t sequence, int32_t start, const std::vector<float>& keys) {
    sv1::AppendKeys header;
    header.set_layer(layer);
    header.set_sequence_id(sequence);
    header.set_start_position(start);
    header.set_num_tokens(static_cast<int32_t>(keys.size() / kKeyRow));
    Send(sv1::MESSAGE_TAG_APPEND_KEYS, header, {keys});
  }
  data_plane::Message Receive() {
    absl::StatusOr<data_plane::Message> message = worker_->Recv(absl::Seconds(10));
    EXPECT_TRUE(message.ok()) << message.status();
    return message.ok() ? *std::move(message) : data_plane::Message();
  }
  sv1::Error ReceiveError() {
    data_plane::Message message = Receive();
    EXPECT_EQ(message.tag, sv1::MESSAGE_TAG_ERROR) << selector_wire::TagName(message.tag);
    sv1::Error error;
    EXPECT_TRUE(selector_wire::DecodeHeader(message, 1, &error).ok());
    return error;
  }

  std::mt19937 rng_{42};
  control::v1::SelectorLink link_;
  data_plane::InMemoryRendezvousStore store_;
  SelectorCounters counters_;
  std::unique_ptr<SelectorChannelServer> server_;
  std::unique_ptr<data_plane::Channel> worker_;
};

TEST_F(SelectorChannelServerTest, AMalformedHelloIsAnErrorForTheWholeChannel) {
  sv1::Hello hello = GoodHello();
  hello.set_num_kv_heads(3);  // 4 heads are not a multiple of 3
  Send(sv1::MESSAGE_TAG_HELLO, hello);
  sv1::Error error = ReceiveError();
  EXPECT_EQ(error.sequence_id(), -1);
  EXPECT_THAT(error.message(), HasSubstr("num_kv_heads 3"));
  hello = GoodHello();
  hello.mutable_layers()->set_last(0);  // not what the controller assigned
  Send(sv1::MESSAGE_TAG_HELLO, hello);
  EXPECT_THAT(ReceiveError().message(), HasSubstr("the controller assigned layers 1-2"));
  // The link survives a bad HELLO: a good one configures it.
  Send(sv1::MESSAGE_TAG_HELLO, GoodHello());
  for (int i = 0; i < 500 && !server_->serving(); ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(server_->serving());
}

TEST_F(SelectorChannelServerTest, SelectsAnswerInOrderAndErrorsConcernOneSequence) {
  Send(sv1::MESSAGE_TAG_HELLO, GoodHello());
  const std::vector<float> keys_a = RandomVector(20 * kKeyRow, &rng_);
  const std::vector<float> keys_b = RandomVector(12 * kKeyRow, &rng_);
  AppendKeys(1, 100, 0, keys_a);
  AppendKeys(1, 200, 0, keys_b);
  // A gap (positions 12..15 missing) is that sequence's error, not the channel's.
  AppendKeys(1, 200, 16, RandomVector(2 * kKeyRow, &rng_));
  sv1::Error gap = ReceiveError();
  EXPECT_EQ(gap.sequence_id(), 200);
  // Layer 0 is not on this link.
  AppendKeys(0, 100, 0, keys_a);
  EXPECT_THAT(ReceiveError().message(), HasSubstr("layer 0"));

  // One SELECT for three sequences: 100 (budget 5), 200 (default budget 3), 300 (never attached).
  sv1::Select select;
  select.set_layer(1);
  select.set_step(17);
  for (int64_t id : {100, 200, 300}) select.add_sequence_ids(id);
  select.add_positions(20);
  select.add_positions(12);
  select.add_positions(0);
  select.add_budgets(5);
  select.add_budgets(0);
  select.add_budgets(0);
  const std::vector<float> new_keys = RandomVector(3 * kKeyRow, &rng_);
  const std::vector<float> queries = RandomVector(3 * kQueryRow, &rng_);
  Send(sv1::MESSAGE_TAG_SELECT, select, {new_keys, queries});
  // Sequence 300 had no index: its key at position 0 creates one, and a query at position 1 leaves
  // nothing outside sinks and recent: an empty selection, not an error.
  data_plane::Message reply = Receive();
  ASSERT_EQ(reply.tag, sv1::MESSAGE_TAG_SELECTION) << selector_wire::TagName(reply.tag);
  sv1::Selection selection;
  ASSERT_TRUE(selector_wire::DecodeHeader(reply, 2, &selection).ok());
  ASSERT_EQ(selection.sequence_ids_size(), 3);
  EXPECT_EQ(selection.step(), 17u);
  EXPECT_EQ(selection.layer(), 1);
  EXPECT_EQ(selection.for_positions(0), 21);
  EXPECT_EQ(selection.for_positions(1), 13);
  std::vector<int32_t> positions;
  // [3 sequences][2 KV heads][width 5]: sequence 200 is padded from its budget 3 with -1.
  ASSERT_TRUE(selector_wire::DecodeTensor(reply, 1, 3 * kKvHeads * 5, &positions).ok());
  for (int h = 0; h < kKvHeads; ++h) {
    EXPECT_EQ(selection.counts(h), 5);
    EXPECT_EQ(selection.counts(kKvHeads + h), 3);
    EXPECT_EQ(selection.counts(2 * kKvHeads + h), 0);
    for (int j = 0; j < 5; ++j) {
      const int32_t p = positions[h * 5 + j];
      // Sequence 100 at query position 21: sinks [0,1) and recent >= 21+1-2 = 20 are excluded.
      EXPECT_GE(p, 1);
      EXPECT_LT(p, 20);
    }
    for (int j = 3; j < 5; ++j) EXPECT_EQ(positions[(kKvHeads + h) * 5 + j], -1);
  }

  // After DETACH, a SELECT for the sequence is its error; the other sequence still works.
  sv1::Detach detach;
  detach.add_sequence_ids(100);
  Send(sv1::MESSAGE_TAG_DETACH, detach);
  sv1::Select after;
  after.set_layer(1);
  after.set_step(18);
  after.add_sequence_ids(100);
  after.add_positions(21);
  after.add_sequence_ids(200);
  after.add_positions(13);
  Send(sv1::MESSAGE_TAG_SELECT, after, {RandomVector(2 * kKeyRow, &rng_), RandomVector(2 * kQueryRow, &rng_)});
  EXPECT_EQ(ReceiveError().sequence_id(), 100);
  reply = Receive();
  ASSERT_EQ(reply.tag, sv1::MESSAGE_TAG_SELECTION);
  ASSERT_TRUE(selector_wire::DecodeHeader(reply, 2, &selection).ok());
  ASSERT_EQ(selection.sequence_ids_size(), 1);
  EXPECT_EQ(selection.sequence_ids(0), 200);
  EXPECT_GE(counters_.errors_sent_total, 3);
  EXPECT_EQ(server_->attached_sequences(), 2);  // 200 and 300
}

TEST_F(SelectorChannelServerTest, StoppingSaysGoodbyeAndAWorkerGoodbyeEndsTheLink) {
  Send(sv1::MESSAGE_TAG_HELLO, GoodHello());
  AppendKeys(2, 7, 0, RandomVector(4 * kKeyRow, &rng_));
  server_->Stop("test stop");
  data_plane::Message goodbye = Receive();
  EXPECT_EQ(goodbye.tag, sv1::MESSAGE_TAG_GOODBYE);
  sv1::Error why;
  ASSERT_TRUE(selector_wire::DecodeHeader(goodbye, 1, &why).ok());
  EXPECT_EQ(why.message(), "test stop");
  EXPECT_TRUE(server_->ended());
  EXPECT_EQ(server_->attached_sequences(), 0) << "the index is dropped with the link";
}

TEST_F(SelectorChannelServerTest, AWorkerThatGoesAwayEndsTheLinkWithoutAnError) {
  Send(sv1::MESSAGE_TAG_HELLO, GoodHello());
  AppendKeys(1, 7, 0, RandomVector(4 * kKeyRow, &rng_));
  worker_->Close();
  for (int i = 0; i < 500 && !server_->ended(); ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(server_->ended());
  EXPECT_EQ(server_->attached_sequences(), 0);
}

}  // namespace
}  // namespace asyncspade
