#include "tools/launcher/deployment_plan.h"

#include "gtest/gtest.h"

namespace asyncspade::launcher {
namespace {

DeploymentConfig GpuDeployment() {
  DeploymentConfig config;
  config.decode_workers.replicas = 2;
  config.decode_workers.devices.cpu = false;
  config.decode_workers.devices.gpus_per_replica = {{0, 1}, {2, 3}};
  config.decode_workers.restart = RestartPolicy::kNever;
  config.decode_workers.max_restarts = 0;
  config.selectors.replicas = 2;
  config.selectors.devices.cpu = false;
  config.selectors.devices.gpus_per_replica = {{4}, {5}};
  config.selectors.restart = RestartPolicy::kOnFailure;
  config.selectors.max_restarts = 7;
  return config;
}

TEST(DeploymentPlanTest, PlansDecodeWorkersThenSelectorsWithTheirDevicesAndPolicies) {
  const std::vector<MemberPlan> plan = PlanMembers(GpuDeployment());
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(plan[0].id, "decode-worker-0");
  EXPECT_EQ(plan[0].role, ProcessRole::kDecodeWorker);
  EXPECT_EQ(plan[0].gpus, (std::vector<int>{0, 1}));
  EXPECT_EQ(plan[0].restart, RestartPolicy::kNever);
  EXPECT_EQ(plan[1].id, "decode-worker-1");
  EXPECT_EQ(plan[1].gpus, (std::vector<int>{2, 3}));
  EXPECT_EQ(plan[2].id, "selector-0");
  EXPECT_EQ(plan[2].role, ProcessRole::kSelector);
  EXPECT_EQ(plan[2].gpus, (std::vector<int>{4}));
  EXPECT_EQ(plan[2].restart, RestartPolicy::kOnFailure);
  EXPECT_EQ(plan[2].max_restarts, 7);
  EXPECT_EQ(plan[3].id, "selector-1");
  EXPECT_EQ(plan[3].gpus, (std::vector<int>{5}));
}

TEST(DeploymentPlanTest, CpuDeploymentsHaveNoGpus) {
  DeploymentConfig config;
  config.selectors.replicas = 1;
  const std::vector<MemberPlan> plan = PlanMembers(config);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_TRUE(plan[0].gpus.empty());
  EXPECT_TRUE(plan[1].gpus.empty());
  EXPECT_EQ(DevicesFlag(plan[0].gpus), "cpu");
}

TEST(DeploymentPlanTest, SelectorsAddedByScalingReuseTheGpusRoundRobin) {
  const DeploymentConfig config = GpuDeployment();
  EXPECT_EQ(PlanSelector(config, 2).gpus, (std::vector<int>{4}));
  EXPECT_EQ(PlanSelector(config, 3).gpus, (std::vector<int>{5}));
  EXPECT_EQ(PlanSelector(config, 3).id, "selector-3");
  EXPECT_EQ(PlanSelector(config, 3).max_restarts, 7);
}

TEST(DeploymentPlanTest, MemberCommandLineCarriesEveryFlagTheProcessesTake) {
  const MemberPlan worker = PlanMembers(GpuDeployment())[1];
  EXPECT_EQ(MemberArgs(worker, "/etc/d.yaml", "127.0.0.1:5000", "127.0.0.1"),
            (std::vector<std::string>{"--config", "/etc/d.yaml", "--controller", "127.0.0.1:5000", "--id",
                                      "decode-worker-1", "--host", "127.0.0.1", "--port", "0", "--devices", "2,3"}));
}

TEST(DeploymentPlanTest, WildcardHostsBecomeLoopback) {
  EXPECT_EQ(LocalHost("0.0.0.0"), "127.0.0.1");
  EXPECT_EQ(LocalHost("::"), "127.0.0.1");
  EXPECT_EQ(LocalHost(""), "127.0.0.1");
  EXPECT_EQ(LocalHost("10.1.2.3"), "10.1.2.3");
  EXPECT_EQ(DialableAddress("0.0.0.0:5000"), "127.0.0.1:5000");
  EXPECT_EQ(DialableAddress("[::]:5000"), "127.0.0.1:5000");
  EXPECT_EQ(DialableAddress("10.1.2.3:5000"), "10.1.2.3:5000");
  EXPECT_EQ(DialableAddress("[::1]:5000"), "[::1]:5000");
}

}  // namespace
}  // namespace asyncspade::launcher
