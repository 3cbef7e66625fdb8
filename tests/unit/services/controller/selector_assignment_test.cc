#include "services/controller/selector_assignment.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/data_plane/rendezvous_store.h"
#include "gtest/gtest.h"

namespace asyncspade::controller {
namespace {

using control::v1::ROLE_DECODE_WORKER;
using control::v1::ROLE_KV_SELECTOR;

AssignmentMember Worker(const std::string& id, uint64_t incarnation = 1, bool eligible = true, bool cuda = false) {
  return {id, ROLE_DECODE_WORKER, incarnation, eligible, cuda};
}
AssignmentMember Selector(const std::string& id, uint64_t incarnation = 1, bool eligible = true, bool cuda = false) {
  return {id, ROLE_KV_SELECTOR, incarnation, eligible, cuda};
}

LayerLayout Auto(int num_layers) { return LayerLayout{num_layers, std::nullopt}; }

std::map<std::string, LayerRange> ServedBy(const std::vector<SelectorLayers>& served) {
  std::map<std::string, LayerRange> out;
  for (const SelectorLayers& s : served) out[s.selector_id] = s.layers;
  return out;
}

std::map<std::string, uint64_t> EpochsByChannel(const std::vector<AssignedLink>& links) {
  std::map<std::string, uint64_t> out;
  for (const AssignedLink& l : links) out[l.link.channel_id()] = l.link.epoch();
  return out;
}

// Every layer of the model is served by exactly one selector.
void ExpectExactCover(const std::vector<SelectorLayers>& served, int num_layers) {
  std::vector<int> count(num_layers, 0);
  for (const SelectorLayers& s : served) {
    ASSERT_LE(s.layers.first, s.layers.last) << s.selector_id;
    for (int layer = s.layers.first; layer <= s.layers.last; ++layer) {
      ASSERT_GE(layer, 0);
      ASSERT_LT(layer, num_layers);
      ++count[layer];
    }
  }
  for (int layer = 0; layer < num_layers; ++layer) EXPECT_EQ(count[layer], 1) << "layer " << layer;
}

TEST(NaturalIdLessTest, OrdersNumbersByValue) {
  EXPECT_TRUE(NaturalIdLess("selector-2", "selector-10"));
  EXPECT_FALSE(NaturalIdLess("selector-10", "selector-2"));
  EXPECT_TRUE(NaturalIdLess("decode-0", "selector-0"));
  EXPECT_FALSE(NaturalIdLess("selector-1", "selector-1"));
  EXPECT_TRUE(NaturalIdLess("selector-1", "selector-01"));  // equal value: fewer digits first (total order)
  EXPECT_TRUE(NaturalIdLess("a", "a0"));
  EXPECT_TRUE(NaturalIdLess("x9", "x123456789012345678901234567890"));  // longer than any integer type
}

TEST(ChannelIdForTest, NamesThePairAndIsAValidDataPlaneChannelId) {
  const std::string id = ChannelIdFor("decode-0", "selector-1");
  EXPECT_EQ(id, "decode-0~selector-1");
  // Both ends pass it to the data plane, which puts it in rendezvous keys and file names.
  EXPECT_TRUE(data_plane::ValidateChannelId(id).ok()) << data_plane::ValidateChannelId(id);
}

TEST(AssignSelectorLayersTest, AutoSplitsEvenlyOverOneToFourSelectors) {
  // 28 layers (Qwen3-0.6B): the first 28 % n selectors get one layer more.
  const std::vector<std::vector<LayerRange>> expected = {
      {{0, 27}},
      {{0, 13}, {14, 27}},
      {{0, 9}, {10, 18}, {19, 27}},
      {{0, 6}, {7, 13}, {14, 20}, {21, 27}},
  };
  for (int n = 1; n <= 4; ++n) {
    SCOPED_TRACE(absl::StrCat(n, " selectors"));
    std::vector<AssignmentMember> members = {Worker("decode-0")};
    // Registered out of order: the split follows member-id order, not registration order.
    for (int i = n - 1; i >= 0; --i) members.push_back(Selector(absl::StrCat("selector-", i)));
    const std::vector<SelectorLayers> served = AssignSelectorLayers(members, Auto(28));
    ASSERT_EQ(served.size(), static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(served[i].selector_id, absl::StrCat("selector-", i));
      EXPECT_EQ(served[i].layers, expected[n - 1][i]);
    }
    ExpectExactCover(served, 28);
  }
}

TEST(AssignSelectorLayersTest, AutoUsesOnlyEligibleSelectorsInNaturalOrder) {
  const std::vector<AssignmentMember> members = {Selector("selector-10"), Selector("selector-2"),
                                                 Selector("selector-3", 1, /*eligible=*/false)};
  const std::vector<SelectorLayers> served = AssignSelectorLayers(members, Auto(30));
  ASSERT_EQ(served.size(), 2u);
  EXPECT_EQ(served[0].selector_id, "selector-2");
  EXPECT_EQ(served[0].layers, (LayerRange{0, 14}));
  EXPECT_EQ(served[1].selector_id, "selector-10");
  EXPECT_EQ(served[1].layers, (LayerRange{15, 29}));
}

TEST(AssignSelectorLayersTest, AutoWithMoreSelectorsThanLayersLeavesTheExtraIdle) {
  const std::vector<AssignmentMember> members = {Selector("s-0"), Selector("s-1"), Selector("s-2"), Selector("s-3")};
  const std::vector<SelectorLayers> served = AssignSelectorLayers(members, Auto(3));
  ASSERT_EQ(served.size(), 3u);
  ExpectExactCover(served, 3);
  EXPECT_EQ(ServedBy(served).count("s-3"), 0u);
}

TEST(AssignSelectorLayersTest, ExplicitRangesFollowMemberIdOrderAndKeepSlotsOfIneligibleSelectors) {
  LayerLayout layout{10, std::vector<LayerRange>{{0, 2}, {3, 8}, {9, 9}}};
  // selector-0 is not READY: it keeps slot 0, so selector-1 still serves range 1.
  const std::vector<AssignmentMember> members = {Selector("selector-2"), Selector("selector-0", 1, false),
                                                 Selector("selector-1")};
  const std::vector<SelectorLayers> served = AssignSelectorLayers(members, layout);
  const auto by = ServedBy(served);
  ASSERT_EQ(by.size(), 2u);
  EXPECT_EQ(by.at("selector-1"), (LayerRange{3, 8}));
  EXPECT_EQ(by.at("selector-2"), (LayerRange{9, 9}));
  const std::vector<LayerRange> uncovered = UncoveredLayers(served, 10);
  ASSERT_EQ(uncovered.size(), 1u);
  EXPECT_EQ(uncovered[0], (LayerRange{0, 2}));

  // A selector beyond the listed ranges serves nothing.
  std::vector<AssignmentMember> more = {Selector("selector-0"), Selector("selector-1"), Selector("selector-2"),
                                        Selector("selector-3")};
  const auto by_more = ServedBy(AssignSelectorLayers(more, layout));
  EXPECT_EQ(by_more.size(), 3u);
  EXPECT_EQ(by_more.count("selector-3"), 0u);
  ExpectExactCover(AssignSelectorLayers(more, layout), 10);
}

TEST(ComputeLinksTest, EveryEligibleWorkerGetsEverySelectorsRange) {
  const std::vector<AssignmentMember> members = {Worker("decode-0"), Worker("decode-1"),
                                                 Worker("decode-2", 1, /*eligible=*/false),  // STARTING
                                                 Selector("selector-0"), Selector("selector-1")};
  uint64_t epoch = 100;
  const std::vector<AssignedLink> links = ComputeLinks(members, Auto(28), {}, &epoch);
  ASSERT_EQ(links.size(), 4u);
  std::set<uint64_t> epochs;
  for (const AssignedLink& l : links) {
    const auto& link = l.link;
    EXPECT_NE(link.decode_worker_id(), "decode-2");
    EXPECT_EQ(link.channel_id(), absl::StrCat(link.decode_worker_id(), "~", link.selector_id()));
    EXPECT_EQ(link.transport(), "gloo");
    if (link.selector_id() == "selector-0") {
      EXPECT_EQ(link.layers().first(), 0);
      EXPECT_EQ(link.layers().last(), 13);
    } else {
      EXPECT_EQ(link.layers().first(), 14);
      EXPECT_EQ(link.layers().last(), 27);
    }
    EXPECT_GT(link.epoch(), 100u);
    EXPECT_LE(link.epoch(), epoch);
    epochs.insert(link.epoch());
  }
  EXPECT_EQ(epochs.size(), 4u) << "each new link takes its own epoch";
  EXPECT_EQ(epoch, 104u);
  // Sorted by channel id.
  for (size_t i = 1; i < links.size(); ++i) EXPECT_LT(links[i - 1].link.channel_id(), links[i].link.channel_id());
}

TEST(ComputeLinksTest, NoSelectorsOrNoWorkersMeansNoLinks) {
  uint64_t epoch = 0;
  EXPECT_TRUE(ComputeLinks({Worker("decode-0")}, Auto(28), {}, &epoch).empty());
  EXPECT_TRUE(ComputeLinks({Selector("selector-0")}, Auto(28), {}, &epoch).empty());
  EXPECT_TRUE(ComputeLinks({Worker("decode-0", 1, false), Selector("selector-0")}, Auto(28), {}, &epoch).empty());
  EXPECT_EQ(epoch, 0u);
}

TEST(ComputeLinksTest, UnchangedLinksKeepTheirEpochs) {
  std::vector<AssignmentMember> members = {Worker("decode-0"), Selector("selector-0"), Selector("selector-1")};
  uint64_t epoch = 0;
  const std::vector<AssignedLink> first = ComputeLinks(members, Auto(28), {}, &epoch);
  const uint64_t after_first = epoch;
  const std::vector<AssignedLink> again = ComputeLinks(members, Auto(28), first, &epoch);
  EXPECT_EQ(epoch, after_first);
  EXPECT_EQ(EpochsByChannel(again), EpochsByChannel(first));

  // A new decode worker: only its own links are new.
  members.push_back(Worker("decode-1"));
  const std::vector<AssignedLink> grown = ComputeLinks(members, Auto(28), again, &epoch);
  const auto epochs = EpochsByChannel(grown);
  ASSERT_EQ(epochs.size(), 4u);
  EXPECT_EQ(epochs.at("decode-0~selector-0"), EpochsByChannel(first).at("decode-0~selector-0"));
  EXPECT_EQ(epochs.at("decode-0~selector-1"), EpochsByChannel(first).at("decode-0~selector-1"));
  EXPECT_GT(epochs.at("decode-1~selector-0"), after_first);
  EXPECT_GT(epochs.at("decode-1~selector-1"), after_first);
}

TEST(ComputeLinksTest, ReplacedSelectorGetsNewEpochsOnlyOnItsLinks) {
  std::vector<AssignmentMember> members = {Worker("decode-0"), Worker("decode-1"), Selector("selector-0"),
                                           Selector("selector-1")};
  uint64_t epoch = 0;
  const std::vector<AssignedLink> before = ComputeLinks(members, Auto(28), {}, &epoch);
  const uint64_t after_before = epoch;
  members[3].incarnation = 7;  // selector-1 restarted
  const std::vector<AssignedLink> after = ComputeLinks(members, Auto(28), before, &epoch);
  const auto old_epochs = EpochsByChannel(before);
  const auto new_epochs = EpochsByChannel(after);
  for (const auto& [channel, e] : new_epochs) {
    if (channel.ends_with("selector-1")) {
      EXPECT_GT(e, after_before) << channel;
    } else {
      EXPECT_EQ(e, old_epochs.at(channel)) << channel;
    }
  }
  EXPECT_EQ(epoch, after_before + 2);

  // A replaced decode worker: the same for its links.
  members[0].incarnation = 9;
  const uint64_t before_worker = epoch;
  const auto worker_epochs = EpochsByChannel(ComputeLinks(members, Auto(28), after, &epoch));
  EXPECT_GT(worker_epochs.at("decode-0~selector-0"), before_worker);
  EXPECT_GT(worker_epochs.at("decode-0~selector-1"), before_worker);
  EXPECT_EQ(worker_epochs.at("decode-1~selector-0"), new_epochs.at("decode-1~selector-0"));
}

TEST(ComputeLinksTest, ScalingUpAndDownMovesLayersAndRenewsEveryChangedLink) {
  std::vector<AssignmentMember> members = {Worker("decode-0"), Selector("selector-0"), Selector("selector-1")};
  uint64_t epoch = 0;
  const std::vector<AssignedLink> two = ComputeLinks(members, Auto(28), {}, &epoch);

  // Scale up to 3: every range changes ([0,13],[14,27] -> [0,9],[10,18],[19,27]).
  members.push_back(Selector("selector-2"));
  const uint64_t before_up = epoch;
  const std::vector<AssignedLink> three = ComputeLinks(members, Auto(28), two, &epoch);
  ASSERT_EQ(three.size(), 3u);
  for (const AssignedLink& l : three) EXPECT_GT(l.link.epoch(), before_up) << l.link.channel_id();
  EXPECT_EQ(three[0].link.layers().last(), 9);
  EXPECT_EQ(three[2].link.layers().first(), 19);

  // Scale down to 2 (selector-1 leaves): selector-2 takes the upper half.
  members.erase(members.begin() + 2);
  const uint64_t before_down = epoch;
  const std::vector<AssignedLink> down = ComputeLinks(members, Auto(28), three, &epoch);
  ASSERT_EQ(down.size(), 2u);
  const auto by_selector = [&](const std::string& id) {
    for (const AssignedLink& l : down) {
      if (l.link.selector_id() == id) return l.link;
    }
    return control::v1::SelectorLink();
  };
  EXPECT_EQ(by_selector("selector-0").layers().last(), 13);
  EXPECT_EQ(by_selector("selector-2").layers().first(), 14);
  EXPECT_EQ(by_selector("selector-2").layers().last(), 27);
  for (const AssignedLink& l : down) EXPECT_GT(l.link.epoch(), before_down);
}

TEST(ComputeLinksTest, LinkWithdrawnAndRestoredGetsANewEpoch) {
  std::vector<AssignmentMember> members = {Worker("decode-0"), Selector("selector-0")};
  uint64_t epoch = 0;
  const std::vector<AssignedLink> up = ComputeLinks(members, Auto(4), {}, &epoch);
  ASSERT_EQ(up.size(), 1u);
  members[1].eligible = false;  // unhealthy
  const std::vector<AssignedLink> down = ComputeLinks(members, Auto(4), up, &epoch);
  EXPECT_TRUE(down.empty());
  members[1].eligible = true;  // heartbeating again
  const std::vector<AssignedLink> again = ComputeLinks(members, Auto(4), down, &epoch);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_GT(again[0].link.epoch(), up[0].link.epoch());
}

TEST(ComputeLinksTest, TransportIsNcclOnlyWhenBothEndsHaveGpus) {
  const std::vector<AssignmentMember> members = {Worker("decode-0", 1, true, /*cuda=*/true),
                                                 Worker("decode-1", 1, true, /*cuda=*/false),
                                                 Selector("selector-0", 1, true, /*cuda=*/true)};
  uint64_t epoch = 0;
  const std::vector<AssignedLink> links = ComputeLinks(members, Auto(8), {}, &epoch);
  ASSERT_EQ(links.size(), 2u);
  EXPECT_EQ(links[0].link.channel_id(), "decode-0~selector-0");
  EXPECT_EQ(links[0].link.transport(), "nccl");
  EXPECT_EQ(links[1].link.transport(), "gloo");
}

TEST(UncoveredLayersTest, ReportsMaximalGaps) {
  const std::vector<SelectorLayers> served = {{"a", {2, 3}}, {"b", {6, 6}}};
  const std::vector<LayerRange> gaps = UncoveredLayers(served, 9);
  ASSERT_EQ(gaps.size(), 3u);
  EXPECT_EQ(gaps[0], (LayerRange{0, 1}));
  EXPECT_EQ(gaps[1], (LayerRange{4, 5}));
  EXPECT_EQ(gaps[2], (LayerRange{7, 8}));
  EXPECT_EQ(LayerRangesText(gaps), "0-1, 4-5, 7-8");
  EXPECT_EQ(LayerRangesText({{5, 5}}), "5");
  EXPECT_TRUE(UncoveredLayers({{"a", {0, 8}}}, 9).empty());
}

}  // namespace
}  // namespace asyncspade::controller
