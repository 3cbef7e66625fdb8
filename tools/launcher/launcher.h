// The supervisor behind `asyncspade launch` and `asyncspade demo`: starts every process of a
// deployment YAML on this node (the controller first, then the decode workers and KV selectors with
// their devices), waits until all are READY, then watches them: a process that exits unexpectedly
// is reported and restarted per its `restart` policy (with backoff, up to `max_restarts`), the
// selector count follows the controller's desired state (`asyncspade ctl scale selectors N`),
// drained members are stopped, and Stop() ends everything in order (decode workers, selectors, then
// the controller; SIGTERM, then SIGKILL after a grace period). docs/operations.md describes it.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/config/deployment_config.h"
#include "tools/launcher/child_process.h"
#include "tools/launcher/controller_client.h"
#include "tools/launcher/deployment_plan.h"

namespace asyncspade::launcher {

struct LauncherOptions {
  std::string config_path;  // the deployment YAML
  // Where asyncspade-controller, asyncspade-decode-worker and asyncspade-kv-selector are.
  std::string bin_dir;
  // One log file per process (<id>.log). Empty: a new directory under $TMPDIR.
  std::string log_dir;
  // Other programs to run in a role (tests use stand-ins); empty: <bin_dir>/<the role's binary>.
  std::string controller_program;
  std::string decode_worker_program;
  std::string selector_program;
  // Added to every child's environment.
  std::vector<std::pair<std::string, std::string>> extra_env;

  absl::Duration poll_interval = absl::Milliseconds(100);
  absl::Duration desired_state_interval = absl::Milliseconds(500);
  // How long a process may take to exit after SIGTERM before it gets SIGKILL. Unset:
  // lifecycle.drain_timeout_s + 5 s (members finish their running requests first).
  std::optional<absl::Duration> stop_grace;
  // The n-th restart of a process waits first_restart_backoff * 2^(n-1), at most max_restart_backoff.
  absl::Duration first_restart_backoff = absl::Seconds(1);
  absl::Duration max_restart_backoff = absl::Seconds(30);
  // One line per event (started, exited, restarting, scaled, stopped). Default: stderr.
  std::function<void(const std::string&)> on_event;
};

struct Endpoints {
  std::string grpc;     // HOST:PORT
  std::string http;     // http://HOST:PORT
  std::string metrics;  // http://HOST:PORT/metrics
};

// What the launcher knows about one of its processes.
struct ProcessSnapshot {
  enum class Phase {
    kRunning,   // started (READY or still starting)
    kBackoff,   // exited; a restart is scheduled
    kDown,      // exited and left down (restart: never, a clean exit, or max_restarts reached)
    kRetiring,  // being stopped on purpose (scaled down or drained)
    kRetired,   // stopped on purpose
    kStopped,   // stopped by Stop()
  };
  std::string id;  // "controller", "decode-worker-0", "selector-1"
  ProcessRole role = ProcessRole::kController;
  Phase phase = Phase::kRunning;
  pid_t pid = 0;  // the current (or last) process
  int restarts = 0;
  std::string log_path;
  std::optional<ExitStatus> last_exit;
};
std::string PhaseName(ProcessSnapshot::Phase phase);

class Launcher {
 public:
  // Loads and validates the YAML and checks it against the model (ResolveDeploymentForModel) and
  // the machine (GPU ids, the programs exist); creates the log directory. Errors name the file,
  // key or program (InvalidArgument / NotFound).
  static absl::StatusOr<std::unique_ptr<Launcher>> Create(LauncherOptions options);
  ~Launcher();  // Stop()
  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;

  const DeploymentConfig& config() const { return config_; }
  const std::string& log_dir() const { return log_dir_; }

  // Starts every process and returns once all are READY and the controller serves, or
  // lifecycle.startup_timeout_s passed (DeadlineExceeded naming each process that is not ready,
  // with the tail of its log), or a process exited while starting (FailedPrecondition, the same
  // details), or RequestStop() was called (Cancelled). On failure everything started is stopped.
  absl::Status Start();
  const Endpoints& endpoints() const { return endpoints_; }

  // Asks the supervisor to stop every process. Only sets a flag: safe from a signal handler.
  void RequestStop() { stop_requested_.store(true); }
  // Blocks until supervision ended and every process is stopped and reaped: OK after RequestStop(),
  // Unavailable when the deployment failed on its own (the controller exited).
  absl::Status Wait();
  absl::Status Stop();  // RequestStop() + Wait()

  std::vector<ProcessSnapshot> Processes() const;
  std::optional<ProcessSnapshot> Process(const std::string& id) const;

 private:
  struct Managed;

  Launcher(LauncherOptions options, DeploymentConfig config, ResolvedDeployment resolved, std::string config_path);

  void SupervisorMain();
  absl::Status StartAll();
  absl::Status WaitForControllerReady(Managed& controller, absl::Time deadline);
  absl::Status WaitForMembersReady(absl::Time deadline);
  absl::Status SuperviseUntilStopped();
  void StopAll();

  absl::Status Spawn(Managed& process);
  // Returns false when `process` is the controller: the deployment cannot go on.
  bool HandleExit(Managed& process, const ExitStatus& status);
  void ForgetMember(const std::string& id, pid_t pid);
  void ReconcileDesiredState();
  void AdvanceRetirements(absl::Time now);
  Managed& AddSelector(int index);
  void Emit(const std::string& line);
  void PublishSnapshot();
  std::string NotReadyReport(const std::vector<const Managed*>& processes,
                             const control::ListMembersResponse* members);
  absl::Duration StopGrace() const;
  std::string ProgramFor(ProcessRole role) const;

  const LauncherOptions options_;
  const DeploymentConfig config_;
  const ResolvedDeployment resolved_;
  const std::string config_path_;  // absolute: children run from the same cwd, but say where it is
  std::string log_dir_;
  std::string run_dir_;     // a temporary directory for the controller's ready file
  std::string ready_file_;  // where the controller writes its endpoints once it listens

  // Owned and touched by the supervisor thread only (it forks every child: see ChildProcess).
  std::vector<std::unique_ptr<Managed>> processes_;
  std::unique_ptr<ControllerClient> client_;
  std::string member_host_;

  absl::Mutex supervisor_mutex_;  // serializes Start() and joining
  std::thread supervisor_ ABSL_GUARDED_BY(supervisor_mutex_);
  std::atomic<bool> supervisor_started_{false};
  std::atomic<bool> stop_requested_{false};
  absl::Notification started_;
  absl::Status start_status_;  // written before started_ is notified
  absl::Notification finished_;
  absl::Status final_status_;  // written before finished_ is notified
  Endpoints endpoints_;        // written before started_ is notified

  mutable absl::Mutex snapshot_mutex_;
  std::vector<ProcessSnapshot> snapshot_ ABSL_GUARDED_BY(snapshot_mutex_);
};

// The directory of the running executable (/proc/self/exe), where the process binaries are built.
std::string ExecutableDir();

}  // namespace asyncspade::launcher
