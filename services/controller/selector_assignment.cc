#include "services/controller/selector_assignment.h"

#include <algorithm>
#include <cctype>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace asyncspade::controller {
namespace {

constexpr char kTransportGloo[] = "gloo";
constexpr char kTransportNccl[] = "nccl";

std::vector<const AssignmentMember*> MembersOfRole(const std::vector<AssignmentMember>& members, control::v1::Role role,
                                                   bool eligible_only) {
  std::vector<const AssignmentMember*> out;
  for (const AssignmentMember& member : members) {
    if (member.role == role && (member.eligible || !eligible_only)) out.push_back(&member);
  }
  std::sort(out.begin(), out.end(), [](const AssignmentMember* a, const AssignmentMember* b) {
    return NaturalIdLess(a->member_id, b->member_id);
  });
  return out;
}

}  // namespace

bool NaturalIdLess(const std::string& a, const std::string& b) {
  size_t i = 0;
  size_t j = 0;
  while (i < a.size() && j < b.size()) {
    const bool a_digit = std::isdigit(static_cast<unsigned char>(a[i])) != 0;
    const bool b_digit = std::isdigit(static_cast<unsigned char>(b[j])) != 0;
    if (a_digit && b_digit) {
      size_t a_end = i;
      size_t b_end = j;
      while (a_end < a.size() && std::isdigit(static_cast<unsigned char>(a[a_end]))) ++a_end;
      while (b_end < b.size() && std::isdigit(static_cast<unsigned char>(b[b_end]))) ++b_end;
      // Compare the numbers without converting them (they may not fit in an integer): strip
      // leading zeros, then a longer run of digits is larger.
      size_t a_nz = i;
      size_t b_nz = j;
      while (a_nz + 1 < a_end && a[a_nz] == '0') ++a_nz;
      while (b_nz + 1 < b_end && b[b_nz] == '0') ++b_nz;
      const size_t a_len = a_end - a_nz;
      const size_t b_len = b_end - b_nz;
      if (a_len != b_len) return a_len < b_len;
      const int cmp = a.compare(a_nz, a_len, b, b_nz, b_len);
      if (cmp != 0) return cmp < 0;
      // Equal values: fewer leading zeros first, so the order stays total.
      if (a_end - i != b_end - j) return (a_end - i) < (b_end - j);
      i = a_end;
      j = b_end;
      continue;
    }
    if (a[i] != b[j]) return a[i] < b[j];
    ++i;
    ++j;
  }
  return (a.size() - i) < (b.size() - j);
}

std::string ChannelIdFor(const std::string& decode_worker_id, const std::string& selector_id) {
  return absl::StrCat(decode_worker_id, "~", selector_id);
}

std::vector<SelectorLayers> AssignSelectorLayers(const std::vector<AssignmentMember>& members,
                                                 const LayerLayout& layout) {
  std::vector<SelectorLayers> out;
  if (layout.num_layers < 1) return out;
  if (layout.explicit_ranges.has_value()) {
    const std::vector<const AssignmentMember*> registered =
        MembersOfRole(members, control::v1::ROLE_KV_SELECTOR, /*eligible_only=*/false);
    const std::vector<LayerRange>& ranges = *layout.explicit_ranges;
    for (size_t i = 0; i < registered.size() && i < ranges.size(); ++i) {
      if (registered[i]->eligible) out.push_back({registered[i]->member_id, ranges[i]});
    }
    return out;
  }
  const std::vector<const AssignmentMember*> eligible =
      MembersOfRole(members, control::v1::ROLE_KV_SELECTOR, /*eligible_only=*/true);
  const int serving = std::min<int>(static_cast<int>(eligible.size()), layout.num_layers);
  if (serving == 0) return out;
  const int base = layout.num_layers / serving;
  const int extra = layout.num_layers % serving;
  int first = 0;
  for (int i = 0; i < serving; ++i) {
    const int size = base + (i < extra ? 1 : 0);
    out.push_back({eligible[i]->member_id, LayerRange{first, first + size - 1}});
    first += size;
  }
  return out;
}

std::vector<AssignedLink> ComputeLinks(const std::vector<AssignmentMember>& members, const LayerLayout& layout,
                                       const std::vector<AssignedLink>& previous, uint64_t* next_epoch) {
  std::map<std::string, const AssignedLink*> previous_by_channel;
  for (const AssignedLink& link : previous) previous_by_channel[link.link.channel_id()] = &link;
  std::map<std::string, const AssignmentMember*> by_id;
  for (const AssignmentMember& member : members) by_id[member.member_id] = &member;

  const std::vector<SelectorLayers> served = AssignSelectorLayers(members, layout);
  const std::vector<const AssignmentMember*> workers =
      MembersOfRole(members, control::v1::ROLE_DECODE_WORKER, /*eligible_only=*/true);

  std::vector<AssignedLink> links;
  for (const AssignmentMember* worker : workers) {
    for (const SelectorLayers& selector_layers : served) {
      const AssignmentMember* selector = by_id.at(selector_layers.selector_id);
      AssignedLink assigned;
      control::v1::SelectorLink& link = assigned.link;
      link.set_decode_worker_id(worker->member_id);
      link.set_selector_id(selector->member_id);
      link.mutable_layers()->set_first(selector_layers.layers.first);
      link.mutable_layers()->set_last(selector_layers.layers.last);
      link.set_channel_id(ChannelIdFor(worker->member_id, selector->member_id));
      link.set_transport(worker->has_cuda_device && selector->has_cuda_device ? kTransportNccl : kTransportGloo);
      assigned.decode_worker_incarnation = worker->incarnation;
      assigned.selector_incarnation = selector->incarnation;

      auto it = previous_by_channel.find(link.channel_id());
      const bool unchanged =
          it != previous_by_channel.end() && it->second->decode_worker_incarnation == worker->incarnation &&
          it->second->selector_incarnation == selector->incarnation &&
          it->second->link.layers().first() == link.layers().first() &&
          it->second->link.layers().last() == link.layers().last() && it->second->link.transport() == link.transport();
      link.set_epoch(unchanged ? it->second->link.epoch() : ++*next_epoch);
      links.push_back(std::move(assigned));
    }
  }
  std::sort(links.begin(), links.end(),
            [](const AssignedLink& a, const AssignedLink& b) { return a.link.channel_id() < b.link.channel_id(); });
  return links;
}

std::vector<LayerRange> UncoveredLayers(const std::vector<SelectorLayers>& served, int num_layers) {
  std::vector<bool> covered(std::max(num_layers, 0), false);
  for (const SelectorLayers& s : served) {
    for (int layer = std::max(s.layers.first, 0); layer <= s.layers.last && layer < num_layers; ++layer) {
      covered[layer] = true;
    }
  }
  std::vector<LayerRange> gaps;
  for (int layer = 0; layer < num_layers; ++layer) {
    if (covered[layer]) continue;
    if (!gaps.empty() && gaps.back().last == layer - 1) {
      gaps.back().last = layer;
    } else {
      gaps.push_back({layer, layer});
    }
  }
  return gaps;
}

std::string LayerRangesText(const std::vector<LayerRange>& ranges) {
  return absl::StrJoin(ranges, ", ", [](std::string* out, const LayerRange& r) {
    if (r.first == r.last) {
      absl::StrAppend(out, r.first);
    } else {
      absl::StrAppend(out, r.first, "-", r.last);
    }
  });
}

bool SameLink(const control::v1::SelectorLink& a, const control::v1::SelectorLink& b) {
  return a.channel_id() == b.channel_id() && a.epoch() == b.epoch() && a.decode_worker_id() == b.decode_worker_id() &&
         a.selector_id() == b.selector_id() && a.layers().first() == b.layers().first() &&
         a.layers().last() == b.layers().last() && a.transport() == b.transport();
}

}  // namespace asyncspade::controller
