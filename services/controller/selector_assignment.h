// Which KV selector serves which layers of which decode worker: a pure function of the membership
// view, so that every rule (layer split, link eligibility, when an epoch changes) is unit-testable
// without processes.
//
// A link joins one decode worker and one selector for the selector's layer range. Every selector
// serves its range for every decode worker, so the links are the product of the eligible decode
// workers and the eligible selectors. A link keeps its epoch while nothing about it changes; any
// change (a side replaced by a new incarnation, another layer range, another transport, the link
// withdrawn and created again) gives it a fresh epoch, so both ends re-create the data-plane
// channel under new rendezvous keys.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "asyncspade/control/v1/control.pb.h"
#include "common/config/deployment_config.h"

namespace asyncspade::controller {

// One registered member as the assignment sees it.
struct AssignmentMember {
  std::string member_id;
  control::v1::Role role = control::v1::ROLE_UNSPECIFIED;
  uint64_t incarnation = 0;
  // May hold links now: READY selectors; READY or draining decode workers (a draining worker still
  // decodes its running requests, which need their selections).
  bool eligible = false;
  bool has_cuda_device = false;  // decides the transport: NCCL only when both ends are on GPUs
};

// How the model's layers are split over the selectors (the deployment's `selectors.layers`).
struct LayerLayout {
  int num_layers = 0;
  // nullopt: `auto`, an even split over the eligible selectors, recomputed when that set changes.
  // Set: range i belongs to the i-th registered selector in member-id order, eligible or not, so a
  // selector that restarts gets its own range back and the others keep theirs.
  std::optional<std::vector<LayerRange>> explicit_ranges;
};

struct SelectorLayers {
  std::string selector_id;
  LayerRange layers;
};

// A link and the incarnations of its two ends when it was made (its epoch is only valid for them).
struct AssignedLink {
  control::v1::SelectorLink link;
  uint64_t decode_worker_incarnation = 0;
  uint64_t selector_incarnation = 0;
};

// Orders member ids the way an operator numbers them: "selector-2" before "selector-10".
bool NaturalIdLess(const std::string& a, const std::string& b);

// "<worker>~<selector>": the separator cannot occur in member ids (see ValidateMemberId).
std::string ChannelIdFor(const std::string& decode_worker_id, const std::string& selector_id);

// The layers each eligible selector serves, in member-id order. Auto: the model's layers split
// evenly (the first num_layers % n selectors get one more; selectors beyond num_layers get none).
std::vector<SelectorLayers> AssignSelectorLayers(const std::vector<AssignmentMember>& members,
                                                 const LayerLayout& layout);

// The links for `members`. Links equal to one in `previous` (same channel id, layers, transport and
// incarnations of both ends) keep its epoch; every other link takes ++*next_epoch. The result is
// sorted by channel id.
std::vector<AssignedLink> ComputeLinks(const std::vector<AssignmentMember>& members, const LayerLayout& layout,
                                       const std::vector<AssignedLink>& previous, uint64_t* next_epoch);

// The layers no eligible selector serves, as maximal ranges in ascending order.
std::vector<LayerRange> UncoveredLayers(const std::vector<SelectorLayers>& served, int num_layers);

// "0-14, 20" for operators' messages.
std::string LayerRangesText(const std::vector<LayerRange>& ranges);

// True when both links describe the same channel (same id, epoch, layers, transport and ends).
bool SameLink(const control::v1::SelectorLink& a, const control::v1::SelectorLink& b);

}  // namespace asyncspade::controller
