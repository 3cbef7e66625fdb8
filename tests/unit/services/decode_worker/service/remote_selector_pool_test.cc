// RemoteSelectorPool (the worker's end) against real SelectorChannelServers (the selector's end)
// over real Gloo channels on loopback, with an in-memory rendezvous store. The test thread plays
// the decode loop: it calls the pool and runs the tasks the pool posts to the loop.
#include "services/decode_worker/service/remote_selector_pool.h"

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/data_plane/in_memory_rendezvous_store.h"
#include "gtest/gtest.h"
#include "services/kv_selector/service/selector_channel_server.h"

namespace asyncspade {
namespace {

constexpr int kLayers = 3;
constexpr int kHeads = 4;
constexpr int kKvHeads = 2;
constexpr int kHeadDim = 8;
constexpr int kBudget = 4;
constexpr int kSinks = 2;
constexpr int kRecent = 4;
constexpr int kKeyRow = kKvHeads * kHeadDim;
constexpr int kQueryRow = kHeads * kHeadDim;

// The worker's KV cache as far as the pool can see it.
class FakeKeyCache : public KvKeyReader {
 public:
  bool ReadKeys(int64_t sequence_id, int layer, int32_t start, int32_t num_tokens, float* out) const override {
    auto it = keys_.find({sequence_id, layer});
    if (it == keys_.end() || static_cast<size_t>(start + num_tokens) * kKeyRow > it->second.size()) return false;
    std::copy_n(it->second.begin() + static_cast<size_t>(start) * kKeyRow, static_cast<size_t>(num_tokens) * kKeyRow, out);
    ++reads_;
    return true;
  }
  std::vector<float>& keys(int64_t sequence_id, int layer) { return keys_[{sequence_id, layer}]; }
  int reads() const { return reads_; }

 private:
  std::map<std::pair<int64_t, int>, std::vector<float>> keys_;
  mutable int reads_ = 0;
};

std::vector<float> RandomVector(size_t n, std::mt19937* rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = uniform(*rng);
  return v;
}

// Top-`budget` positions per KV head by Σ_group q·k over keys [sinks, t+2-recent) (the query is for
// position t+1 over keys 0..t), in double precision, sorted ascending.
std::vector<std::vector<int32_t>> BruteForceTopK(const std::vector<float>& keys, const float* queries, int32_t t,
                                                 int budget) {
  std::vector<std::vector<int32_t>> out(kKvHeads);
  const int group = kHeads / kKvHeads;
  const int32_t end = t + 2 - kRecent;
  for (int h = 0; h < kKvHeads; ++h) {
    std::vector<std::pair<double, int32_t>> scored;
    for (int32_t p = kSinks; p < end; ++p) {
      double score = 0;
      for (int g = 0; g < group; ++g) {
        for (int d = 0; d < kHeadDim; ++d) {
          score += double(queries[(h * group + g) * kHeadDim + d]) * keys[static_cast<size_t>(p) * kKeyRow + h * kHeadDim + d];
        }
      }
      scored.push_back({score, p});
    }
    std::sort(scored.begin(), scored.end(), [](auto& a, auto& b) { return a.first > b.first; });
    for (int i = 0; i < budget && i < static_cast<int>(scored.size()); ++i) out[h].push_back(scored[i].second);
    std::sort(out[h].begin(), out[h].end());
  }
  return out;
}

std::vector<std::vector<int32_t>> SelectedPositions(const Selection& selection) {
  std::vector<std::vector<int32_t>> out(kKvHeads);
  for (int h = 0; h < kKvHeads; ++h) {
    for (int i = 0; i < selection.counts[h]; ++i) out[h].push_back(selection.indices[h * selection.budget + i]);
    std::sort(out[h].begin(), out[h].end());
  }
  return out;
}

control::v1::SelectorLink Link(const std::string& selector, int first, int last, uint64_t epoch) {
  control::v1::SelectorLink link;
  link.set_decode_worker_id("worker");
  link.set_selector_id(selector);
  link.mutable_layers()->set_first(first);
  link.mutable_layers()->set_last(last);
  link.set_channel_id("worker~" + selector);
  link.set_epoch(epoch);
  link.set_transport("gloo");
  return link;
}

class RemoteSelectorPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RemoteSelectorPoolOptions options;
    options.worker_id = "worker";
    options.num_layers = kLayers;
    options.hello.set_num_heads(kHeads);
    options.hello.set_num_kv_heads(kKvHeads);
    options.hello.set_head_dim(kHeadDim);
    options.hello.set_budget(kBudget);
    options.hello.set_sinks(kSinks);
    options.hello.set_recent(kRecent);
    options.hello.set_dtype(selector::v1::TENSOR_DTYPE_F32);
    options.store = &store_;
    options.connect_timeout = absl::Seconds(5);
    options.key_reader = &cache_;
    options.run_on_decode_loop = [this](std::function<void()> task) {
      absl::MutexLock lock(&mutex_);
      tasks_.push_back(std::move(task));
    };
    pool_ = std::make_unique<RemoteSelectorPool>(options);
  }
  void TearDown() override {
    pool_->Shutdown();
    selectors_.clear();
  }

  // Runs what the pool posted to the decode loop.
  void Pump() {
    std::deque<std::function<void()>> tasks;
    {
      absl::MutexLock lock(&mutex_);
      tasks.swap(tasks_);
    }
    for (auto& task : tasks) task();
    pool_->Poll();
  }
  bool PumpUntil(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(15)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      Pump();
      if (done()) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  SelectorChannelServer* StartSelector(const control::v1::SelectorLink& link) {
    SelectorChannelOptions options;
    options.selector_id = link.selector_id();
    options.store = &store_;
    options.connect_timeout = absl::Seconds(5);
    options.counters = &counters_;
    selectors_.push_back(std::make_unique<SelectorChannelServer>(link, options));
    selectors_.back()->Start();
    return selectors_.back().get();
  }

  void Assign(std::vector<control::v1::SelectorLink> links, uint64_t version) {
    control::v1::Assignment assignment;
    assignment.set_version(version);
    for (auto& link : links) *assignment.add_links() = link;
    ASSERT_TRUE(pool_->ApplyAssignment(assignment).ok());
  }

  // The sequence's keys 0..length-1 of `layer`, in the fake cache.
  std::vector<float>& FillCache(int64_t sequence_id, int layer, int length) {
    std::vector<float>& keys = cache_.keys(sequence_id, layer);
    keys = RandomVector(static_cast<size_t>(length) * kKeyRow, &rng_);
    return keys;
  }

  // Submits position t (its key is the cache's key t) and waits for the selection for t+1.
  std::shared_ptr<const Selection> SelectAndWait(int64_t sequence_id, int layer, int32_t t, const std::vector<float>& q,
                                                 int budget = 0) {
    pool_->BeginStep(++step_);
    SelectRequest request;
    request.layer = layer;
    request.step = step_;
    request.sequence_ids = {sequence_id};
    request.positions = {t};
    const std::vector<float>& keys = cache_.keys(sequence_id, layer);
    request.new_keys.assign(keys.begin() + static_cast<size_t>(t) * kKeyRow, keys.begin() + static_cast<size_t>(t + 1) * kKeyRow);
    request.predicted_queries = q;
    if (budget > 0) request.budgets = {budget};
    pool_->Submit(std::move(request));
    std::shared_ptr<const Selection> selection;
    PumpUntil([&] {
      selection = pool_->Latest(sequence_id, layer);
      return selection != nullptr && selection->for_position == t + 1;
    });
    return selection;
  }

  uint64_t step_ = 0;
  std::mt19937 rng_{1234};
  data_plane::InMemoryRendezvousStore store_;
  FakeKeyCache cache_;
  SelectorCounters counters_;
  absl::Mutex mutex_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mutex_);
  std::unique_ptr<RemoteSelectorPool> pool_;
  std::vector<std::unique_ptr<SelectorChannelServer>> selectors_;
};

TEST_F(RemoteSelectorPoolTest, SelectionOverTheDataPlaneEqualsBruteForceTopK) {
  StartSelector(Link("sel-a", 0, 1, 1));
  StartSelector(Link("sel-b", 2, 2, 1));
  Assign({Link("sel-a", 0, 1, 1), Link("sel-b", 2, 2, 1)}, 7);
  EXPECT_EQ(pool_->applied_assignment_version(), 7u);
  ASSERT_TRUE(PumpUntil([&] { return pool_->ServesLayer(0) && pool_->ServesLayer(1) && pool_->ServesLayer(2); }));

  for (int layer = 0; layer < kLayers; ++layer) {
    // Prefill of 30 keys in two chunks, then one decode step at position 30.
    std::vector<float>& keys = FillCache(11, layer, 31);
    pool_->AppendKeys(layer, 11, 0, 20, keys.data());
    pool_->AppendKeys(layer, 11, 20, 10, keys.data() + 20 * kKeyRow);
    const std::vector<float> q = RandomVector(kQueryRow, &rng_);
    std::shared_ptr<const Selection> selection = SelectAndWait(11, layer, 30, q);
    ASSERT_NE(selection, nullptr) << "layer " << layer;
    EXPECT_EQ(selection->for_position, 31);
    EXPECT_EQ(selection->step, step_);
    EXPECT_EQ(selection->budget, kBudget);
    EXPECT_EQ(SelectedPositions(*selection), BruteForceTopK(keys, q.data(), 30, kBudget)) << "layer " << layer;
  }
  EXPECT_EQ(cache_.reads(), 0) << "nothing had to be copied from the cache";
  // A per-request budget travels with the SELECT.
  std::vector<float>& keys = cache_.keys(11, 0);
  keys.resize(32 * kKeyRow, 0.5f);
  const std::vector<float> q = RandomVector(kQueryRow, &rng_);
  std::shared_ptr<const Selection> wide = SelectAndWait(11, 0, 31, q, /*budget=*/7);
  ASSERT_NE(wide, nullptr);
  EXPECT_EQ(wide->budget, 7);
  EXPECT_EQ(SelectedPositions(*wide), BruteForceTopK(keys, q.data(), 31, 7));

  pool_->Detach(11);
  EXPECT_EQ(pool_->Latest(11, 0), nullptr);
  EXPECT_TRUE(PumpUntil([&] { return selectors_[0]->attached_sequences() == 0; }));
}

TEST_F(RemoteSelectorPoolTest, ANewSelectorIsBroughtUpFromTheWorkersCache) {
  // Sequence 5 prefilled while no selector served anything: the pool only learns its length.
  std::vector<float>& keys5 = FillCache(5, 1, 41);
  pool_->AppendKeys(1, 5, 0, 40, keys5.data());
  EXPECT_FALSE(pool_->ServesLayer(1));

  StartSelector(Link("sel-a", 0, 2, 3));
  Assign({Link("sel-a", 0, 2, 3)}, 1);
  ASSERT_TRUE(PumpUntil([&] { return pool_->ServesLayer(1); }));
  EXPECT_EQ(pool_->stats().reattached_keys_total, 40) << "the known sequence was re-attached when the link came up";

  const std::vector<float> q = RandomVector(kQueryRow, &rng_);
  std::shared_ptr<const Selection> selection = SelectAndWait(5, 1, 40, q);
  ASSERT_NE(selection, nullptr);
  EXPECT_EQ(SelectedPositions(*selection), BruteForceTopK(keys5, q.data(), 40, kBudget));

  // Sequence 9 was never shown to the pool: its first SELECT copies positions 0..24 first.
  std::vector<float>& keys9 = FillCache(9, 2, 26);
  std::shared_ptr<const Selection> fresh = SelectAndWait(9, 2, 25, q);
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(SelectedPositions(*fresh), BruteForceTopK(keys9, q.data(), 25, kBudget));
  EXPECT_EQ(pool_->stats().reattached_keys_total, 40 + 25);
}

TEST_F(RemoteSelectorPoolTest, ALostSelectorIsNotServedAndAReplacementWithANewEpochIs) {
  SelectorChannelServer* first = StartSelector(Link("sel-a", 0, 2, 1));
  Assign({Link("sel-a", 0, 2, 1)}, 1);
  ASSERT_TRUE(PumpUntil([&] { return pool_->ServesLayer(0); }));
  std::vector<float>& keys = FillCache(3, 0, 60);
  pool_->AppendKeys(0, 3, 0, 50, keys.data());
  const std::vector<float> q = RandomVector(kQueryRow, &rng_);
  ASSERT_NE(SelectAndWait(3, 0, 50, q), nullptr);

  // The selector goes away (it says GOODBYE): every layer it served falls back.
  first->Stop("test: selector stopped");
  ASSERT_TRUE(PumpUntil([&] { return !pool_->ServesLayer(0) && !pool_->ServesLayer(2); }));
  EXPECT_EQ(pool_->stats().link_failures_total, 1);
  EXPECT_NE(pool_->Latest(3, 0), nullptr) << "the last selection stays usable (its positions are still valid)";

  // The controller assigns a replacement with a new epoch; it gets the sequence from the cache.
  StartSelector(Link("sel-a", 0, 2, 2));
  Assign({Link("sel-a", 0, 2, 2)}, 2);
  ASSERT_TRUE(PumpUntil([&] { return pool_->ServesLayer(0) && pool_->ServesLayer(2); }));
  const std::vector<float> q2 = RandomVector(kQueryRow, &rng_);
  std::shared_ptr<const Selection> selection = SelectAndWait(3, 0, 55, q2);
  ASSERT_NE(selection, nullptr);
  EXPECT_EQ(SelectedPositions(*selection), BruteForceTopK(keys, q2.data(), 55, kBudget));

  // Withdrawing the link closes it.
  Assign({}, 3);
  EXPECT_FALSE(pool_->ServesLayer(0));
  EXPECT_TRUE(PumpUntil([&] { return selectors_[1]->ended(); }));
}

TEST_F(RemoteSelectorPoolTest, ARestartedSequenceIsRebuiltOnTheSelector) {
  StartSelector(Link("sel-a", 0, 0, 1));
  Assign({Link("sel-a", 0, 0, 1)}, 1);
  ASSERT_TRUE(PumpUntil([&] { return pool_->ServesLayer(0); }));
  std::vector<float>& keys = FillCache(4, 0, 40);
  pool_->AppendKeys(0, 4, 0, 39, keys.data());
  const std::vector<float> q = RandomVector(kQueryRow, &rng_);
  ASSERT_NE(SelectAndWait(4, 0, 39, q), nullptr);

  // Preempted and recomputed: the same id starts again at position 0 with other keys (the test's
  // cache changes them to show the selector really rebuilt its index).
  std::vector<float>& again = FillCache(4, 0, 30);
  pool_->AppendKeys(0, 4, 0, 29, again.data());
  std::shared_ptr<const Selection> selection = SelectAndWait(4, 0, 29, q);
  ASSERT_NE(selection, nullptr);
  EXPECT_EQ(SelectedPositions(*selection), BruteForceTopK(again, q.data(), 29, kBudget));
  EXPECT_EQ(counters_.errors_sent_total, 0);
}

TEST_F(RemoteSelectorPoolTest, AssignmentsForOtherWorkersOrBadLayersAreHandled) {
  control::v1::SelectorLink other = Link("sel-a", 0, 0, 1);
  other.set_decode_worker_id("someone-else");
  Assign({other}, 4);
  EXPECT_EQ(pool_->stats().links_assigned, 0);

  control::v1::Assignment bad;
  *bad.add_links() = Link("sel-a", 1, kLayers, 1);
  absl::Status status = pool_->ApplyAssignment(bad);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("outside the model"), std::string::npos) << status;
}

}  // namespace
}  // namespace asyncspade
