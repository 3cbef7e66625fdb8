#include "services/controller/deployment_state.h"

#include <atomic>
#include <map>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asyncspade::controller {
namespace {

using control::v1::MEMBER_STATE_DRAINING;
using control::v1::MEMBER_STATE_READY;
using control::v1::MEMBER_STATE_STARTING;
using control::v1::MEMBER_STATE_UNHEALTHY;
using control::v1::ROLE_DECODE_WORKER;
using control::v1::ROLE_KV_SELECTOR;
using ::testing::HasSubstr;

constexpr absl::Duration kTimeout = absl::Seconds(5);

class DeploymentStateTest : public ::testing::Test {
 protected:
  void SetUp() override { Build(LayerLayout{28, std::nullopt}); }

  void Build(LayerLayout layout, bool asyncspade_default = true) {
    DeploymentStateOptions options;
    options.heartbeat_interval = absl::Milliseconds(500);
    options.heartbeat_timeout = kTimeout;
    options.layout = std::move(layout);
    options.desired_selectors = 2;
    options.default_policy_needs_selectors = asyncspade_default;
    options.first_counter = 1000;
    options.address_answers = [this](const std::string& address) {
      ++probes_;
      return old_address_answers_;
    };
    options.on_decode_worker_lost = [this](const std::string& id, const std::string& reason) {
      lost_.push_back(id + ": " + reason);
    };
    state_ = std::make_unique<DeploymentState>(std::move(options));
  }

  uint64_t Register(const std::string& id, control::v1::Role role, const std::string& address, int64_t pid = 1) {
    control::v1::RegisterRequest request;
    request.set_member_id(id);
    request.set_role(role);
    request.set_address(address);
    request.set_pid(pid);
    request.add_devices("cpu");
    absl::StatusOr<control::v1::RegisterResponse> response = state_->Register(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? response->incarnation() : 0;
  }

  control::v1::HeartbeatResponse Beat(const std::string& id, uint64_t incarnation, control::v1::MemberState state,
                                      uint64_t applied = 0, int running = 0) {
    control::v1::HeartbeatRequest request;
    request.set_member_id(id);
    request.set_incarnation(incarnation);
    request.set_state(state);
    request.set_assignment_version(applied);
    request.mutable_load()->set_running_requests(running);
    return state_->Heartbeat(request);
  }

  std::map<std::string, control::v1::Member> Members() {
    std::map<std::string, control::v1::Member> out;
    const control::v1::ListMembersResponse list = state_->ListMembers(nullptr);
    for (const auto& m : list.members()) out[m.member_id()] = m;
    return out;
  }

  std::unique_ptr<DeploymentState> state_;
  bool old_address_answers_ = true;
  std::atomic<int> probes_{0};
  std::vector<std::string> lost_;
};

TEST_F(DeploymentStateTest, RegisterGivesDistinctIncarnationsAndTimings) {
  control::v1::RegisterRequest request;
  request.set_member_id("decode-0");
  request.set_role(ROLE_DECODE_WORKER);
  request.set_address("127.0.0.1:1");
  absl::StatusOr<control::v1::RegisterResponse> response = state_->Register(request);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->member_id(), "decode-0");
  EXPECT_EQ(response->heartbeat_interval_ms(), 500);
  EXPECT_EQ(response->heartbeat_timeout_ms(), 5000);
  const uint64_t other = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:2");
  EXPECT_NE(response->incarnation(), other);
  const auto members = Members();
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members.at("decode-0").state(), MEMBER_STATE_STARTING);
}

TEST_F(DeploymentStateTest, RegisterRejectsBadRequests) {
  control::v1::RegisterRequest request;
  request.set_member_id("decode~0");
  request.set_role(ROLE_DECODE_WORKER);
  request.set_address("127.0.0.1:1");
  absl::StatusOr<control::v1::RegisterResponse> bad_id = state_->Register(request);
  EXPECT_EQ(bad_id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_id.status().message(), HasSubstr("decode~0"));

  request.set_member_id("decode-0");
  request.set_role(control::v1::ROLE_UNSPECIFIED);
  EXPECT_EQ(state_->Register(request).status().code(), absl::StatusCode::kInvalidArgument);

  request.set_role(ROLE_DECODE_WORKER);
  request.clear_address();
  absl::StatusOr<control::v1::RegisterResponse> no_address = state_->Register(request);
  EXPECT_EQ(no_address.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_address.status().message(), HasSubstr("address"));
}

TEST_F(DeploymentStateTest, SecondLiveMemberWithSameIdIsRefused) {
  Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:1", /*pid=*/10);
  old_address_answers_ = true;
  control::v1::RegisterRequest request;
  request.set_member_id("decode-0");
  request.set_role(ROLE_DECODE_WORKER);
  request.set_address("127.0.0.1:2");
  request.set_pid(11);
  absl::StatusOr<control::v1::RegisterResponse> response = state_->Register(request);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(response.status().message(), HasSubstr("'decode-0' is already registered"));
  EXPECT_THAT(response.status().message(), HasSubstr("pid 10 at 127.0.0.1:1"));
  EXPECT_EQ(probes_, 1);
  EXPECT_TRUE(lost_.empty());
}

TEST_F(DeploymentStateTest, RestartedMemberWhoseOldAddressIsDeadReplacesIt) {
  const uint64_t first = Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:1", 10);
  old_address_answers_ = false;
  const uint64_t second = Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:2", 11);
  EXPECT_NE(first, second);
  EXPECT_EQ(probes_, 1);
  ASSERT_EQ(lost_.size(), 1u);
  EXPECT_THAT(lost_[0], HasSubstr("decode-0: it was replaced"));
  // The old incarnation is told to re-register.
  EXPECT_TRUE(Beat("decode-0", first, MEMBER_STATE_READY).re_register());
  EXPECT_FALSE(Beat("decode-0", second, MEMBER_STATE_READY).re_register());
}

TEST_F(DeploymentStateTest, SameAddressOrSameProcessOrSilentMemberIsReplacedWithoutProbing) {
  const uint64_t a = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:1", 10);
  const uint64_t b = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:1", 12);  // port now owned by pid 12
  const uint64_t c = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:1", 12);  // same process again
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  state_->CheckLiveness(absl::Now() + kTimeout + absl::Seconds(1));
  const uint64_t d = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:9", 13);  // silent: replaced
  EXPECT_LT(c, d);
  EXPECT_EQ(probes_, 0);
}

TEST_F(DeploymentStateTest, HeartbeatFromUnknownMemberAsksToReRegister) {
  EXPECT_TRUE(Beat("nobody", 1, MEMBER_STATE_READY).re_register());
  const uint64_t inc = Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:1");
  EXPECT_TRUE(Beat("decode-0", inc + 100, MEMBER_STATE_READY).re_register());
  const control::v1::HeartbeatResponse ok = Beat("decode-0", inc, MEMBER_STATE_READY);
  EXPECT_FALSE(ok.re_register());
  EXPECT_FALSE(ok.drain_requested());
  EXPECT_EQ(ok.assignment_version(), state_->assignment_version());
}

TEST_F(DeploymentStateTest, ReadyMembersAreLinkedAndSilenceWithdrawsLinks) {
  const uint64_t w = Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:1");
  const uint64_t s0 = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:2");
  const uint64_t s1 = Register("selector-1", ROLE_KV_SELECTOR, "127.0.0.1:3");
  EXPECT_EQ(state_->CurrentAssignment().links_size(), 0) << "STARTING members get no links";
  EXPECT_EQ(state_->UncoveredLayers().size(), 1u);
  const uint64_t v0 = state_->assignment_version();
  Beat("decode-0", w, MEMBER_STATE_READY);
  Beat("selector-0", s0, MEMBER_STATE_READY);
  Beat("selector-1", s1, MEMBER_STATE_READY);
  const control::v1::Assignment ready = state_->CurrentAssignment();
  ASSERT_EQ(ready.links_size(), 2);
  EXPECT_GT(ready.version(), v0);
  EXPECT_GT(ready.version(), 1000u) << "versions start above first_counter";
  EXPECT_TRUE(state_->UncoveredLayers().empty());
  EXPECT_EQ(Members().at("selector-0").links_size(), 1);
  EXPECT_EQ(Members().at("decode-0").links_size(), 2);
  ASSERT_EQ(state_->RoutableWorkers().size(), 1u);

  // Heartbeats are stamped with the real clock: look from past the timeout (everyone is silent),
  // then let two of them heartbeat again.
  const absl::Time later = absl::Now() + kTimeout + absl::Seconds(1);
  EXPECT_EQ(state_->CheckLiveness(later), 3);
  EXPECT_EQ(state_->CurrentAssignment().links_size(), 0);
  EXPECT_TRUE(state_->RoutableWorkers().empty());
  ASSERT_EQ(lost_.size(), 1u);
  EXPECT_THAT(lost_[0], HasSubstr("decode-0: it sent no heartbeat"));
  EXPECT_EQ(Members().at("selector-1").state(), MEMBER_STATE_UNHEALTHY);

  Beat("decode-0", w, MEMBER_STATE_READY);
  Beat("selector-0", s0, MEMBER_STATE_READY);
  const control::v1::Assignment revived = state_->CurrentAssignment();
  ASSERT_EQ(revived.links_size(), 1);
  EXPECT_EQ(revived.links(0).selector_id(), "selector-0");
  EXPECT_EQ(revived.links(0).layers().first(), 0);
  EXPECT_EQ(revived.links(0).layers().last(), 27) << "auto: the remaining selector serves every layer";
  for (const auto& link : ready.links()) EXPECT_GT(revived.links(0).epoch(), link.epoch());
  EXPECT_EQ(Members().at("selector-1").state(), MEMBER_STATE_UNHEALTHY);
}

TEST_F(DeploymentStateTest, ReRegistrationAfterRestartBumpsEpochsOfItsLinks) {
  const uint64_t w = Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:1");
  const uint64_t s = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:2", 5);
  Beat("decode-0", w, MEMBER_STATE_READY);
  Beat("selector-0", s, MEMBER_STATE_READY);
  const control::v1::Assignment before = state_->CurrentAssignment();
  ASSERT_EQ(before.links_size(), 1);
  old_address_answers_ = false;
  const uint64_t s2 = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:3", 6);
  EXPECT_EQ(state_->CurrentAssignment().links_size(), 0) << "the new incarnation is STARTING";
  Beat("selector-0", s2, MEMBER_STATE_READY);
  const control::v1::Assignment after = state_->CurrentAssignment();
  ASSERT_EQ(after.links_size(), 1);
  EXPECT_EQ(after.links(0).channel_id(), before.links(0).channel_id());
  EXPECT_GT(after.links(0).epoch(), before.links(0).epoch());
  EXPECT_GT(after.version(), before.version());
}

TEST_F(DeploymentStateTest, DeregisterRemovesTheMemberButIgnoresOldIncarnations) {
  const uint64_t w = Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:1");
  control::v1::DeregisterRequest request;
  request.set_member_id("decode-0");
  request.set_incarnation(w + 7);
  EXPECT_TRUE(state_->Deregister(request).ok());
  EXPECT_EQ(Members().size(), 1u);
  request.set_incarnation(w);
  EXPECT_TRUE(state_->Deregister(request).ok());
  EXPECT_TRUE(Members().empty());
  EXPECT_TRUE(state_->Deregister(request).ok()) << "idempotent";
  ASSERT_EQ(lost_.size(), 1u);
}

TEST_F(DeploymentStateTest, DrainingSelectorLosesItsLayersAndIsReportedDrainedOnceReleased) {
  const uint64_t w = Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:1");
  const uint64_t s0 = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:2");
  const uint64_t s1 = Register("selector-1", ROLE_KV_SELECTOR, "127.0.0.1:3");
  for (auto [id, inc] : {std::pair{"decode-0", w}, {"selector-0", s0}, {"selector-1", s1}}) {
    Beat(id, inc, MEMBER_STATE_READY);
  }
  EXPECT_EQ(state_->RequestDrain("nobody").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(state_->RequestDrain("selector-1").ok());
  EXPECT_EQ(Members().at("selector-1").state(), MEMBER_STATE_DRAINING);
  EXPECT_TRUE(Members().at("selector-1").drain_requested());
  const control::v1::Assignment assignment = state_->CurrentAssignment();
  ASSERT_EQ(assignment.links_size(), 1);
  EXPECT_EQ(assignment.links(0).selector_id(), "selector-0");
  EXPECT_EQ(assignment.links(0).layers().last(), 27);
  // Not drained until it heartbeats having applied the assignment without its links.
  EXPECT_EQ(state_->DesiredState(nullptr).drained_members_size(), 0);
  EXPECT_TRUE(Beat("selector-1", s1, MEMBER_STATE_DRAINING, /*applied=*/0).drain_requested());
  EXPECT_EQ(state_->DesiredState(nullptr).drained_members_size(), 0);
  Beat("selector-1", s1, MEMBER_STATE_DRAINING, assignment.version());
  const control::v1::GetDesiredStateResponse desired = state_->DesiredState(nullptr);
  ASSERT_EQ(desired.drained_members_size(), 1);
  EXPECT_EQ(desired.drained_members(0), "selector-1");
  EXPECT_EQ(desired.desired_selectors(), 2);
}

TEST_F(DeploymentStateTest, DrainingWorkerKeepsLinksGetsNoRequestsAndIsDrainedWhenIdle) {
  const uint64_t w = Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:1");
  const uint64_t s = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:2");
  Beat("decode-0", w, MEMBER_STATE_READY);
  Beat("selector-0", s, MEMBER_STATE_READY);
  ASSERT_TRUE(state_->RequestDrain("decode-0").ok());
  EXPECT_TRUE(state_->RoutableWorkers().empty());
  EXPECT_EQ(state_->CurrentAssignment().links_size(), 1) << "its running requests still need selections";
  Beat("decode-0", w, MEMBER_STATE_READY, 0, /*running=*/2);
  EXPECT_EQ(state_->DesiredState(nullptr).drained_members_size(), 0);
  Beat("decode-0", w, MEMBER_STATE_READY, 0, /*running=*/0);
  EXPECT_EQ(state_->DesiredState([](const std::string&) { return 1; }).drained_members_size(), 0)
      << "the controller still relays a request to it";
  EXPECT_EQ(state_->DesiredState([](const std::string&) { return 0; }).drained_members_size(), 1);
}

TEST_F(DeploymentStateTest, ScaleSelectorsValidates) {
  EXPECT_EQ(state_->ScaleSelectors(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(state_->ScaleSelectors(29).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<int> zero = state_->ScaleSelectors(0);
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(zero.status().message(), HasSubstr("asyncspade"));
  absl::StatusOr<int> four = state_->ScaleSelectors(4);
  ASSERT_TRUE(four.ok());
  EXPECT_EQ(*four, 4);
  EXPECT_EQ(state_->DesiredState(nullptr).desired_selectors(), 4);

  Build(LayerLayout{28, std::vector<LayerRange>{{0, 13}, {14, 27}}}, /*asyncspade_default=*/false);
  absl::StatusOr<int> explicit_scale = state_->ScaleSelectors(3);
  EXPECT_EQ(explicit_scale.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(explicit_scale.status().message(), HasSubstr("selectors.layers: auto"));
  EXPECT_TRUE(state_->ScaleSelectors(2).ok());
}

TEST_F(DeploymentStateTest, PushesCarryEachMembersLinksAndRetryAfterFailures) {
  const uint64_t w = Register("decode-0", ROLE_DECODE_WORKER, "127.0.0.1:1");
  const uint64_t s = Register("selector-0", ROLE_KV_SELECTOR, "127.0.0.1:2");
  EXPECT_TRUE(state_->TakePendingPushes(absl::Now()).empty()) << "STARTING members are not pushed to";
  Beat("decode-0", w, MEMBER_STATE_READY);
  Beat("selector-0", s, MEMBER_STATE_READY);
  const uint64_t version = state_->assignment_version();

  std::vector<PendingPush> pushes = state_->TakePendingPushes(absl::Now());
  ASSERT_EQ(pushes.size(), 2u);
  for (const PendingPush& push : pushes) {
    EXPECT_TRUE(push.send_assignment);
    EXPECT_FALSE(push.send_drain);
    EXPECT_EQ(push.assignment.version(), version);
    ASSERT_EQ(push.assignment.links_size(), 1);
    EXPECT_EQ(push.assignment.links(0).channel_id(), "decode-0~selector-0");
  }
  EXPECT_TRUE(state_->TakePendingPushes(absl::Now()).empty()) << "one push in flight per member";

  const PendingPush& worker_push = pushes[0].member_id == "decode-0" ? pushes[0] : pushes[1];
  const PendingPush& selector_push = pushes[0].member_id == "decode-0" ? pushes[1] : pushes[0];
  state_->PushFinished(worker_push, absl::OkStatus(), absl::OkStatus());
  state_->PushFinished(selector_push, absl::UnavailableError("connection refused"), absl::OkStatus());
  EXPECT_TRUE(state_->TakePendingPushes(absl::Now()).empty()) << "the failed push backs off";
  std::vector<PendingPush> retry = state_->TakePendingPushes(absl::Now() + absl::Milliseconds(250));
  ASSERT_EQ(retry.size(), 1u);
  EXPECT_EQ(retry[0].member_id, "selector-0");
  state_->PushFinished(retry[0], absl::OkStatus(), absl::OkStatus());
  EXPECT_TRUE(state_->TakePendingPushes(absl::Now() + absl::Seconds(60)).empty());

  // Failures back off, but a new assignment version is delivered at once all the same.
  const uint64_t w1 = Register("decode-1", ROLE_DECODE_WORKER, "127.0.0.1:3");
  Beat("decode-1", w1, MEMBER_STATE_READY);
  std::vector<PendingPush> third = state_->TakePendingPushes(absl::Now());
  ASSERT_EQ(third.size(), 3u);
  for (const PendingPush& push : third) state_->PushFinished(push, absl::UnavailableError("down"), absl::OkStatus());
  EXPECT_TRUE(state_->TakePendingPushes(absl::Now()).empty());
  ASSERT_TRUE(state_->RequestDrain("decode-1").ok());  // a draining worker keeps its links: same version
  EXPECT_TRUE(state_->TakePendingPushes(absl::Now()).empty()) << "the drain waits for the backoff";
  control::v1::DeregisterRequest bye;
  bye.set_member_id("decode-0");
  bye.set_incarnation(w);
  ASSERT_TRUE(state_->Deregister(bye).ok());  // its links go: a new version
  std::vector<PendingPush> fourth = state_->TakePendingPushes(absl::Now());
  ASSERT_EQ(fourth.size(), 2u);
  for (const PendingPush& push : fourth) {
    EXPECT_EQ(push.send_drain, push.member_id == "decode-1");
    EXPECT_EQ(push.assignment.links_size(), 1);
    state_->PushFinished(push, absl::OkStatus(), absl::OkStatus());
  }

  // A drain is pushed too, with the new assignment (the selector's links are withdrawn).
  ASSERT_TRUE(state_->RequestDrain("selector-0").ok());
  std::vector<PendingPush> drain = state_->TakePendingPushes(absl::Now());
  ASSERT_EQ(drain.size(), 2u);
  for (const PendingPush& push : drain) {
    EXPECT_EQ(push.assignment.links_size(), 0);
    EXPECT_EQ(push.send_drain, push.member_id == "selector-0");
  }
}

}  // namespace
}  // namespace asyncspade::controller
