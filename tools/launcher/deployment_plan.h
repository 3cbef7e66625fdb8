// What a deployment YAML starts: one controller, then the decode workers and KV selectors, each
// with its member id, devices, restart policy and command line. Pure functions, so the launcher's
// decisions can be tested without starting anything.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/config/deployment_config.h"

namespace asyncspade::launcher {

enum class ProcessRole { kController, kDecodeWorker, kSelector };
std::string ProcessRoleName(ProcessRole role);  // "controller", "decode worker", "kv selector"

// The executables of the three roles, as built into <build>/bin/.
inline constexpr char kControllerBinary[] = "asyncspade-controller";
inline constexpr char kDecodeWorkerBinary[] = "asyncspade-decode-worker";
inline constexpr char kSelectorBinary[] = "asyncspade-kv-selector";

struct MemberPlan {
  std::string id;  // "decode-worker-0", "selector-1": the member id it registers with
  ProcessRole role = ProcessRole::kDecodeWorker;
  int index = 0;
  std::vector<int> gpus;  // empty: the CPU
  RestartPolicy restart = RestartPolicy::kOnFailure;
  int max_restarts = 0;
};

// "decode-worker-<index>" or "selector-<index>".
std::string MemberId(ProcessRole role, int index);

// The decode workers, then the selectors, that `config` starts.
std::vector<MemberPlan> PlanMembers(const DeploymentConfig& config);

// Selector `index`, also past selectors.replicas (scaling up): GPUs are reused round-robin from
// selectors.devices.
MemberPlan PlanSelector(const DeploymentConfig& config, int index);

// "cpu" or the GPU ids, comma-separated ("0,1").
std::string DevicesFlag(const std::vector<int>& gpus);

// The address members listen on and reach the controller at: the controller's host, except that
// a wildcard (0.0.0.0, ::, empty) becomes loopback, since every process runs on this node.
std::string LocalHost(const std::string& controller_host);

// Rewrites a wildcard host in "host:port" to loopback (the controller reports its bound address,
// which may be 0.0.0.0).
std::string DialableAddress(const std::string& address);

// The command line (without the program) of a decode worker or selector.
std::vector<std::string> MemberArgs(const MemberPlan& member, const std::string& config_path,
                                    const std::string& controller_address, const std::string& host);

}  // namespace asyncspade::launcher
