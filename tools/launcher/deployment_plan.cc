#include "tools/launcher/deployment_plan.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace asyncspade::launcher {

std::string ProcessRoleName(ProcessRole role) {
  switch (role) {
    case ProcessRole::kController: return "controller";
    case ProcessRole::kDecodeWorker: return "decode worker";
    case ProcessRole::kSelector: return "kv selector";
  }
  return "?";
}

std::string MemberId(ProcessRole role, int index) {
  return absl::StrCat(role == ProcessRole::kSelector ? "selector-" : "decode-worker-", index);
}

std::vector<MemberPlan> PlanMembers(const DeploymentConfig& config) {
  std::vector<MemberPlan> plan;
  const DecodeWorkersSection& workers = config.decode_workers;
  for (int i = 0; i < workers.replicas; ++i) {
    MemberPlan member;
    member.id = MemberId(ProcessRole::kDecodeWorker, i);
    member.role = ProcessRole::kDecodeWorker;
    member.index = i;
    if (!workers.devices.cpu && i < static_cast<int>(workers.devices.gpus_per_replica.size())) {
      member.gpus = workers.devices.gpus_per_replica[i];
    }
    member.restart = workers.restart;
    member.max_restarts = workers.max_restarts;
    plan.push_back(std::move(member));
  }
  for (int i = 0; i < config.selectors.replicas; ++i) plan.push_back(PlanSelector(config, i));
  return plan;
}

MemberPlan PlanSelector(const DeploymentConfig& config, int index) {
  const SelectorsSection& selectors = config.selectors;
  MemberPlan member;
  member.id = MemberId(ProcessRole::kSelector, index);
  member.role = ProcessRole::kSelector;
  member.index = index;
  if (!selectors.devices.cpu && !selectors.devices.gpus_per_replica.empty()) {
    const auto& lists = selectors.devices.gpus_per_replica;
    member.gpus = lists[static_cast<size_t>(index) % lists.size()];
  }
  member.restart = selectors.restart;
  member.max_restarts = selectors.max_restarts;
  return member;
}

std::string DevicesFlag(const std::vector<int>& gpus) {
  return gpus.empty() ? "cpu" : absl::StrJoin(gpus, ",");
}

std::string LocalHost(const std::string& controller_host) {
  if (controller_host.empty() || controller_host == "0.0.0.0" || controller_host == "::" ||
      controller_host == "[::]") {
    return "127.0.0.1";
  }
  return controller_host;
}

std::string DialableAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return address;
  const std::string host = address.substr(0, colon);
  if (host == "0.0.0.0" || host == "[::]" || host == "::" || host.empty()) {
    return absl::StrCat("127.0.0.1", address.substr(colon));
  }
  return address;
}

std::vector<std::string> MemberArgs(const MemberPlan& member, const std::string& config_path,
                                    const std::string& controller_address, const std::string& host) {
  return {"--config", config_path, "--controller", controller_address, "--id",  member.id,
          "--host",   host,        "--port",       "0",                "--devices", DevicesFlag(member.gpus)};
}

}  // namespace asyncspade::launcher
