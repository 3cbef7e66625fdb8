#include "tools/launcher/launcher.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/config/random_weight_presets.h"
#include "common/model_config.h"
#include "common/status.h"
#include "glog/logging.h"
#include "nlohmann/json.hpp"

namespace asyncspade::launcher {

namespace fs = std::filesystem;
using Phase = ProcessSnapshot::Phase;

namespace {

constexpr int kLogTailLines = 20;
constexpr char kControllerId[] = "controller";

std::string StateName(control::MemberState state) {
  switch (state) {
    case control::MEMBER_STATE_STARTING: return "STARTING";
    case control::MEMBER_STATE_READY: return "READY";
    case control::MEMBER_STATE_DRAINING: return "DRAINING";
    case control::MEMBER_STATE_UNHEALTHY: return "UNHEALTHY";
    case control::MEMBER_STATE_GONE: return "GONE";
    default: return "UNSPECIFIED";
  }
}

std::string Seconds(absl::Duration d) { return absl::StrCat(absl::ToDoubleSeconds(d), " s"); }

// Number of GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else the NVIDIA driver's list.
int VisibleGpuCount() {
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"); visible != nullptr) {
    const std::string text(visible);
    if (text.empty()) return 0;
    return static_cast<int>(std::vector<std::string>(absl::StrSplit(text, ',', absl::SkipEmpty())).size());
  }
  std::error_code error;
  int count = 0;
  for (const auto& entry : fs::directory_iterator("/proc/driver/nvidia/gpus", error)) {
    (void)entry;
    ++count;
  }
  return count;
}

absl::Status CheckGpusExist(const DeploymentConfig& config) {
  std::vector<std::pair<std::string, const DevicePlacement*>> placements = {
      {"decode_workers.devices", &config.decode_workers.devices}, {"selectors.devices", &config.selectors.devices}};
  int highest = -1;
  std::string highest_key;
  for (const auto& [key, placement] : placements) {
    if (placement->cpu) continue;
    for (size_t r = 0; r < placement->gpus_per_replica.size(); ++r) {
      for (int id : placement->gpus_per_replica[r]) {
        if (id > highest) {
          highest = id;
          highest_key = absl::StrCat(key, "[", r, "]");
        }
      }
    }
  }
  if (highest < 0) return absl::OkStatus();
  const int count = VisibleGpuCount();
  if (count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        config.source, ": ", highest_key, " places a process on GPU ", highest,
        " but this machine shows no NVIDIA GPU (no /proc/driver/nvidia/gpus entries, or CUDA_VISIBLE_DEVICES is "
        "empty); run it on a GPU machine or use `devices: cpu`"));
  }
  if (highest >= count) {
    return absl::FailedPreconditionError(absl::StrCat(config.source, ": ", highest_key, " uses GPU ", highest,
                                                      " but only ", count, " GPU(s) are visible (ids 0..", count - 1,
                                                      "); fix the device ids"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/", prefix, "XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot create a directory '", pattern, "': ", std::strerror(errno),
                                               "; set TMPDIR to a writable directory"));
  }
  return pattern;
}

}  // namespace

std::string PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kRunning: return "running";
    case Phase::kBackoff: return "restarting";
    case Phase::kDown: return "down";
    case Phase::kRetiring: return "stopping";
    case Phase::kRetired: return "retired";
    case Phase::kStopped: return "stopped";
  }
  return "?";
}

std::string ExecutableDir() {
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  if (error) return ".";
  return self.parent_path().string();
}

struct Launcher::Managed {
  std::string id;
  ProcessRole role = ProcessRole::kController;
  MemberPlan plan;  // members only
  ChildSpec spec;
  std::unique_ptr<ChildProcess> child;
  pid_t last_pid = 0;
  Phase phase = Phase::kRunning;
  int restarts = 0;
  absl::Time restart_at;
  absl::Time retire_deadline;
  bool term_sent = false;  // while retiring
  std::optional<ExitStatus> last_exit;
};

absl::StatusOr<std::unique_ptr<Launcher>> Launcher::Create(LauncherOptions options) {
  if (options.config_path.empty()) return absl::InvalidArgumentError("no deployment YAML given");
  ASSIGN_OR_RETURN(DeploymentConfig config, LoadDeploymentConfig(options.config_path));
  std::error_code error;
  const std::string config_path = fs::absolute(options.config_path, error).lexically_normal().string();

  ModelConfig model;
  if (config.model.random_weights.has_value()) {
    absl::StatusOr<ModelConfig> preset = RandomWeightPresetModelConfig(*config.model.random_weights);
    if (!preset.ok()) return Annotate(preset.status(), absl::StrCat(config.source, ": model.random_weights"));
    model = *std::move(preset);
  } else {
    if (!fs::is_directory(config.model.path, error)) {
      return absl::NotFoundError(absl::StrCat(config.source, ": model.path: '", config.model.path,
                                              "' is not a directory; point it at a HF checkpoint directory "
                                              "(config.json + *.safetensors)"));
    }
    absl::StatusOr<ModelConfig> loaded = LoadModelConfig(config.model.path);
    if (!loaded.ok()) return Annotate(loaded.status(), absl::StrCat(config.source, ": model.path"));
    model = *std::move(loaded);
  }
  ASSIGN_OR_RETURN(ResolvedDeployment resolved, ResolveDeploymentForModel(config, model));
  RETURN_IF_ERROR(CheckGpusExist(config));

  if (options.bin_dir.empty()) options.bin_dir = ExecutableDir();
  std::unique_ptr<Launcher> launcher(
      new Launcher(std::move(options), std::move(config), std::move(resolved), config_path));
  std::vector<ProcessRole> roles = {ProcessRole::kController, ProcessRole::kDecodeWorker};
  if (launcher->config_.selectors.replicas > 0) roles.push_back(ProcessRole::kSelector);
  for (ProcessRole role : roles) {
    const std::string program = launcher->ProgramFor(role);
    if (access(program.c_str(), X_OK) != 0) {
      return absl::NotFoundError(absl::StrCat(
          "the ", ProcessRoleName(role), " program '", program, "' is missing or not executable (",
          std::strerror(errno), "); build it (cmake --build build) or point --build-dir at the build directory"));
    }
  }

  if (launcher->options_.log_dir.empty()) {
    ASSIGN_OR_RETURN(launcher->log_dir_, MakeTempDir("asyncspade-logs-"));
  } else {
    launcher->log_dir_ = launcher->options_.log_dir;
    fs::create_directories(launcher->log_dir_, error);
    if (error || !fs::is_directory(launcher->log_dir_)) {
      return absl::UnavailableError(absl::StrCat("cannot create the log directory '", launcher->log_dir_, "': ",
                                                 error.message(), "; pass a writable --log-dir"));
    }
  }
  launcher->log_dir_ = fs::absolute(launcher->log_dir_, error).lexically_normal().string();
  return launcher;
}

Launcher::Launcher(LauncherOptions options, DeploymentConfig config, ResolvedDeployment resolved,
                   std::string config_path)
    : options_(std::move(options)),
      config_(std::move(config)),
      resolved_(std::move(resolved)),
      config_path_(std::move(config_path)),
      member_host_(LocalHost(config_.controller.host)) {}

Launcher::~Launcher() { (void)Stop(); }

std::string Launcher::ProgramFor(ProcessRole role) const {
  switch (role) {
    case ProcessRole::kController:
      return options_.controller_program.empty() ? absl::StrCat(options_.bin_dir, "/", kControllerBinary)
                                                 : options_.controller_program;
    case ProcessRole::kDecodeWorker:
      return options_.decode_worker_program.empty() ? absl::StrCat(options_.bin_dir, "/", kDecodeWorkerBinary)
                                                    : options_.decode_worker_program;
    case ProcessRole::kSelector:
      return options_.selector_program.empty() ? absl::StrCat(options_.bin_dir, "/", kSelectorBinary)
                                               : options_.selector_program;
  }
  return "";
}

absl::Duration Launcher::StopGrace() const {
  if (options_.stop_grace.has_value()) return *options_.stop_grace;
  return absl::Seconds(config_.lifecycle.drain_timeout_s) + absl::Seconds(5);
}

void Launcher::Emit(const std::string& line) {
  if (options_.on_event) {
    options_.on_event(line);
  } else {
    std::fprintf(stderr, "asyncspade launch: %s\n", line.c_str());
    std::fflush(stderr);
  }
}

absl::Status Launcher::Start() {
  {
    absl::MutexLock lock(&supervisor_mutex_);
    if (supervisor_started_.load()) return absl::FailedPreconditionError("the launcher was already started");
    supervisor_started_.store(true);
    supervisor_ = std::thread([this] { SupervisorMain(); });
  }
  started_.WaitForNotification();
  if (!start_status_.ok()) (void)Wait();
  return start_status_;
}

absl::Status Launcher::Wait() {
  if (!supervisor_started_.load()) return absl::OkStatus();
  finished_.WaitForNotification();
  absl::MutexLock lock(&supervisor_mutex_);
  if (supervisor_.joinable()) supervisor_.join();
  return final_status_;
}

absl::Status Launcher::Stop() {
  RequestStop();
  return Wait();
}

void Launcher::SupervisorMain() {
  start_status_ = StartAll();
  if (!start_status_.ok()) {
    StopAll();
    started_.Notify();
    finished_.Notify();
    return;
  }
  started_.Notify();
  final_status_ = SuperviseUntilStopped();
  StopAll();
  finished_.Notify();
}

absl::Status Launcher::Spawn(Managed& process) {
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(process.spec);
  if (!child.ok()) {
    return Annotate(child.status(), absl::StrCat("starting ", process.id));
  }
  process.child = *std::move(child);
  process.last_pid = process.child->pid();
  process.phase = Phase::kRunning;
  process.term_sent = false;
  return absl::OkStatus();
}

absl::Status Launcher::StartAll() {
  ASSIGN_OR_RETURN(run_dir_, MakeTempDir("asyncspade-launch-"));
  ready_file_ = absl::StrCat(run_dir_, "/controller.ready.json");

  auto controller = std::make_unique<Managed>();
  controller->id = kControllerId;
  controller->role = ProcessRole::kController;
  controller->spec.program = ProgramFor(ProcessRole::kController);
  controller->spec.args = {"--config", config_path_, "--ready-file", ready_file_};
  controller->spec.log_path = absl::StrCat(log_dir_, "/controller.log");
  controller->spec.extra_env = options_.extra_env;
  Managed& controller_ref = *controller;
  processes_.push_back(std::move(controller));

  const absl::Time deadline = absl::Now() + absl::Seconds(config_.lifecycle.startup_timeout_s);
  RETURN_IF_ERROR(Spawn(controller_ref));
  Emit(absl::StrCat("started controller (pid ", controller_ref.last_pid, "), log ", controller_ref.spec.log_path));
  PublishSnapshot();
  RETURN_IF_ERROR(WaitForControllerReady(controller_ref, deadline));
  client_ = std::make_unique<ControllerClient>(DialableAddress(endpoints_.grpc));

  for (const MemberPlan& plan : PlanMembers(config_)) {
    auto member = std::make_unique<Managed>();
    member->id = plan.id;
    member->role = plan.role;
    member->plan = plan;
    member->spec.program = ProgramFor(plan.role);
    member->spec.args = MemberArgs(plan, config_path_, DialableAddress(endpoints_.grpc), member_host_);
    member->spec.log_path = absl::StrCat(log_dir_, "/", plan.id, ".log");
    member->spec.extra_env = options_.extra_env;
    Managed& ref = *member;
    processes_.push_back(std::move(member));
    RETURN_IF_ERROR(Spawn(ref));
    Emit(absl::StrCat("started ", ref.id, " (pid ", ref.last_pid, ", devices ", DevicesFlag(plan.gpus), "), log ",
                      ref.spec.log_path));
  }
  PublishSnapshot();
  return WaitForMembersReady(deadline);
}

absl::Status Launcher::WaitForControllerReady(Managed& controller, absl::Time deadline) {
  const std::string& ready_file = ready_file_;
  while (true) {
    if (stop_requested_.load()) return absl::CancelledError("stopped while the controller was starting");
    std::error_code error;
    if (fs::exists(ready_file, error)) {
      std::ifstream in(ready_file);
      std::stringstream text;
      text << in.rdbuf();
      nlohmann::json ready = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
      if (ready.is_object() && ready.contains("grpc") && ready["grpc"].is_string() && ready.contains("http") &&
          ready["http"].is_string()) {
        endpoints_.grpc = ready["grpc"].get<std::string>();
        endpoints_.http = ready["http"].get<std::string>();
        if (ready.contains("metrics") && ready["metrics"].is_string()) {
          endpoints_.metrics = ready["metrics"].get<std::string>();
        }
        return absl::OkStatus();
      }
    }
    if (std::optional<ExitStatus> exit = controller.child->Poll(); exit.has_value()) {
      controller.last_exit = exit;
      controller.phase = Phase::kDown;
      return absl::FailedPreconditionError(
          absl::StrCat("the controller exited while starting (", exit->Describe(), "); its log ",
                       controller.spec.log_path, " ends with:\n", TailOfFile(controller.spec.log_path, kLogTailLines)));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the controller (pid ", controller.last_pid, ") did not report its endpoints within ",
          config_.lifecycle.startup_timeout_s, " s (lifecycle.startup_timeout_s); its log ", controller.spec.log_path,
          " ends with:\n", TailOfFile(controller.spec.log_path, kLogTailLines)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

std::string Launcher::NotReadyReport(const std::vector<const Managed*>& processes,
                                     const control::ListMembersResponse* members) {
  std::string out;
  for (const Managed* p : processes) {
    std::string state = "not registered with the controller";
    if (members != nullptr) {
      for (const control::Member& m : members->members()) {
        if (m.member_id() == p->id) {
          state = absl::StrCat("registered as pid ", m.pid(), ", state ", StateName(m.state()));
        }
      }
    }
    absl::StrAppend(&out, "\n", p->id, " (pid ", p->last_pid, "): ", state, "; its log ", p->spec.log_path,
                    " ends with:\n", TailOfFile(p->spec.log_path, kLogTailLines));
  }
  return out;
}

absl::Status Launcher::WaitForMembersReady(absl::Time deadline) {
  absl::Status last_error = absl::OkStatus();
  std::optional<control::ListMembersResponse> last;
  std::optional<absl::Time> ready_since;
  const absl::Duration kApplyWait = absl::Seconds(5);
  while (true) {
    if (stop_requested_.load()) return absl::CancelledError("stopped while the deployment was starting");
    for (const auto& p : processes_) {
      if (p->child == nullptr) continue;
      if (std::optional<ExitStatus> exit = p->child->Poll(); exit.has_value()) {
        p->last_exit = exit;
        p->phase = Phase::kDown;
        return absl::FailedPreconditionError(absl::StrCat(p->id, " (pid ", p->last_pid, ") exited while starting (",
                                                          exit->Describe(), "); its log ", p->spec.log_path,
                                                          " ends with:\n",
                                                          TailOfFile(p->spec.log_path, kLogTailLines)));
      }
    }
    absl::StatusOr<control::ListMembersResponse> members = client_->ListMembers(absl::Seconds(2));
    std::vector<const Managed*> not_ready;
    if (members.ok()) {
      last = *members;
      std::map<std::string, const control::Member*> by_id;
      for (const control::Member& m : members->members()) by_id[m.member_id()] = &m;
      bool applied = true;
      for (const auto& p : processes_) {
        if (p->role == ProcessRole::kController) continue;
        auto it = by_id.find(p->id);
        const bool ours = it != by_id.end() && (it->second->pid() == 0 || it->second->pid() == p->last_pid);
        if (!ours || it->second->state() != control::MEMBER_STATE_READY) {
          not_ready.push_back(p.get());
        } else if (it->second->applied_assignment_version() < members->assignment_version()) {
          applied = false;
        }
      }
      if (not_ready.empty() && members->serving()) {
        // Links are opened in the background once members apply the assignment: give them a
        // moment so that the first requests find their selectors (not required for correctness).
        if (!ready_since.has_value()) ready_since = absl::Now();
        if (applied || absl::Now() - *ready_since >= kApplyWait) return absl::OkStatus();
      } else {
        ready_since.reset();
      }
    } else {
      last_error = members.status();
      for (const auto& p : processes_) {
        if (p->role != ProcessRole::kController) not_ready.push_back(p.get());
      }
    }
    if (absl::Now() >= deadline) {
      std::string why;
      if (!not_ready.empty()) {
        why = absl::StrCat(not_ready.size(), " process(es) not READY:",
                           NotReadyReport(not_ready, last.has_value() ? &*last : nullptr));
      } else if (last.has_value()) {
        why = absl::StrCat("every process is READY but the controller does not serve: ", last->not_serving_reason());
      }
      if (!last_error.ok()) absl::StrAppend(&why, "\n(last ListMembers error: ", last_error.message(), ")");
      return absl::DeadlineExceededError(absl::StrCat("the deployment was not ready within ",
                                                      config_.lifecycle.startup_timeout_s,
                                                      " s (lifecycle.startup_timeout_s); ", why));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

absl::Status Launcher::SuperviseUntilStopped() {
  absl::Time next_desired_poll = absl::Now();
  while (!stop_requested_.load()) {
    absl::SleepFor(options_.poll_interval);
    for (size_t i = 0; i < processes_.size(); ++i) {
      Managed& p = *processes_[i];
      if (p.child == nullptr) continue;
      std::optional<ExitStatus> exit = p.child->Poll();
      if (!exit.has_value()) continue;
      if (!HandleExit(p, *exit)) {
        PublishSnapshot();
        return absl::UnavailableError(absl::StrCat("the controller exited (", exit->Describe(), "); see ",
                                                   p.spec.log_path));
      }
    }
    const absl::Time now = absl::Now();
    for (const auto& p : processes_) {
      if (p->phase != Phase::kBackoff || now < p->restart_at) continue;
      ++p->restarts;
      if (absl::Status s = Spawn(*p); !s.ok()) {
        p->phase = Phase::kDown;
        Emit(absl::StrCat(p->id, " could not be restarted: ", s.message(), "; it is left down"));
        continue;
      }
      Emit(absl::StrCat("restarted ", p->id, " (pid ", p->last_pid, ", restart ", p->restarts, " of ",
                        p->plan.max_restarts, ")"));
    }
    AdvanceRetirements(now);
    if (now >= next_desired_poll) {
      ReconcileDesiredState();
      next_desired_poll = absl::Now() + options_.desired_state_interval;
    }
    PublishSnapshot();
  }
  return absl::OkStatus();
}

bool Launcher::HandleExit(Managed& p, const ExitStatus& status) {
  p.child.reset();
  p.last_exit = status;
  if (p.phase == Phase::kRetiring) {
    p.phase = Phase::kRetired;
    Emit(absl::StrCat(p.id, " (pid ", p.last_pid, ") stopped (", status.Describe(), ")"));
    return true;
  }
  if (p.role == ProcessRole::kController) {
    p.phase = Phase::kDown;
    Emit(absl::StrCat("controller (pid ", p.last_pid, ") exited unexpectedly: ", status.Describe(), "; log ",
                      p.spec.log_path, "; nothing can be served without it: stopping every process"));
    return false;
  }
  Emit(absl::StrCat(p.id, " (pid ", p.last_pid, ") exited unexpectedly: ", status.Describe(), "; log ",
                    p.spec.log_path));
  // The controller would notice only after the heartbeat timeout; tell it now so that it withdraws
  // the member's links and stops routing to it at once.
  ForgetMember(p.id, p.last_pid);
  if (p.plan.restart == RestartPolicy::kNever) {
    p.phase = Phase::kDown;
    Emit(absl::StrCat(p.id, " is left down (restart: never)"));
  } else if (status.success()) {
    p.phase = Phase::kDown;
    Emit(absl::StrCat(p.id, " exited cleanly and is left down (restart: on-failure restarts only failures)"));
  } else if (p.restarts >= p.plan.max_restarts) {
    p.phase = Phase::kDown;
    Emit(absl::StrCat(p.id, " is left down: it was already restarted ", p.restarts, " time(s) (max_restarts: ",
                      p.plan.max_restarts, ")"));
  } else {
    absl::Duration backoff = options_.first_restart_backoff;
    for (int i = 0; i < p.restarts && backoff < options_.max_restart_backoff; ++i) backoff *= 2;
    backoff = std::min(backoff, options_.max_restart_backoff);
    p.phase = Phase::kBackoff;
    p.restart_at = absl::Now() + backoff;
    Emit(absl::StrCat("restarting ", p.id, " in ", Seconds(backoff), " (restart ", p.restarts + 1, " of ",
                      p.plan.max_restarts, ")"));
  }
  return true;
}

void Launcher::ForgetMember(const std::string& id, pid_t pid) {
  absl::StatusOr<control::ListMembersResponse> members = client_->ListMembers(absl::Seconds(1));
  if (!members.ok()) return;
  for (const control::Member& m : members->members()) {
    if (m.member_id() == id && m.pid() == pid) {
      (void)client_->Deregister(id, m.incarnation(), absl::Seconds(1));
    }
  }
}

Launcher::Managed& Launcher::AddSelector(int index) {
  const MemberPlan plan = PlanSelector(config_, index);
  for (const auto& p : processes_) {
    if (p->id == plan.id) {  // a retired selector of the same id: reuse its entry and log
      CHECK(p->child == nullptr && p->phase == Phase::kRetired) << p->id << " is still in use";
      p->restarts = 0;
      p->last_exit.reset();
      return *p;
    }
  }
  auto member = std::make_unique<Managed>();
  member->id = plan.id;
  member->role = plan.role;
  member->plan = plan;
  member->spec.program = ProgramFor(plan.role);
  member->spec.args = MemberArgs(plan, config_path_, DialableAddress(endpoints_.grpc), member_host_);
  member->spec.log_path = absl::StrCat(log_dir_, "/", plan.id, ".log");
  member->spec.extra_env = options_.extra_env;
  processes_.push_back(std::move(member));
  return *processes_.back();
}

void Launcher::ReconcileDesiredState() {
  absl::StatusOr<control::GetDesiredStateResponse> desired = client_->GetDesiredState(absl::Seconds(2));
  if (!desired.ok()) return;  // a busy or dying controller; its exit is noticed by the reaper
  const absl::Time now = absl::Now();

  // Members that finished draining (ctl drain, or a selector scaled away) are stopped for good.
  const std::set<std::string> drained(desired->drained_members().begin(), desired->drained_members().end());
  for (const auto& p : processes_) {
    if (p->role == ProcessRole::kController || p->child == nullptr || drained.count(p->id) == 0) continue;
    if (p->phase == Phase::kRetiring && p->term_sent) continue;
    if (p->phase != Phase::kRetiring) Emit(absl::StrCat(p->id, " finished draining: stopping it"));
    p->phase = Phase::kRetiring;
    p->child->Signal(SIGTERM);
    p->term_sent = true;
    p->retire_deadline = now + StopGrace();
  }

  // Selectors: follow the desired count. Active = every selector not being or already retired.
  std::vector<Managed*> active;
  std::set<int> used_indexes;
  for (const auto& p : processes_) {
    if (p->role != ProcessRole::kSelector) continue;
    // A retiring selector still runs under its id: a replacement gets another one.
    if (p->child != nullptr || p->phase != Phase::kRetired) used_indexes.insert(p->plan.index);
    if (p->phase == Phase::kRetiring || p->phase == Phase::kRetired) continue;
    active.push_back(p.get());
  }
  const int want = desired->desired_selectors();
  const int have = static_cast<int>(active.size());
  if (want > have) {
    if (access(ProgramFor(ProcessRole::kSelector).c_str(), X_OK) != 0) {
      Emit(absl::StrCat("cannot scale selectors to ", want, ": '", ProgramFor(ProcessRole::kSelector),
                        "' is missing; build it"));
      return;
    }
    Emit(absl::StrCat("scaling selectors from ", have, " to ", want));
    for (int added = 0, index = 0; added < want - have; ++index) {
      if (used_indexes.count(index) > 0) continue;
      Managed& selector = AddSelector(index);
      used_indexes.insert(index);
      ++added;
      if (absl::Status s = Spawn(selector); !s.ok()) {
        selector.phase = Phase::kDown;
        Emit(absl::StrCat("could not start ", selector.id, ": ", s.message()));
        continue;
      }
      Emit(absl::StrCat("started ", selector.id, " (pid ", selector.last_pid, ", devices ",
                        DevicesFlag(selector.plan.gpus), "), log ", selector.spec.log_path));
    }
  } else if (want < have) {
    Emit(absl::StrCat("scaling selectors from ", have, " to ", want));
    // Selectors that are down go first, then the highest ids.
    std::sort(active.begin(), active.end(), [](const Managed* a, const Managed* b) {
      const bool a_down = a->child == nullptr, b_down = b->child == nullptr;
      if (a_down != b_down) return a_down;
      return a->plan.index > b->plan.index;
    });
    for (int i = 0; i < have - want; ++i) {
      Managed& p = *active[i];
      if (p.child == nullptr) {
        p.phase = Phase::kRetired;
        Emit(absl::StrCat(p.id, " (not running) retired"));
        continue;
      }
      // Drain first: the controller moves its layers to the others, then it is stopped.
      p.phase = Phase::kRetiring;
      p.term_sent = false;
      p.retire_deadline = now + absl::Seconds(config_.lifecycle.drain_timeout_s) + absl::Seconds(5);
      if (absl::Status s = client_->Drain(p.id, absl::Seconds(2)); !s.ok()) {
        Emit(absl::StrCat("drain of ", p.id, " failed (", s.message(), "); stopping it directly"));
        p.child->Signal(SIGTERM);
        p.term_sent = true;
        p.retire_deadline = now + StopGrace();
      } else {
        Emit(absl::StrCat("draining ", p.id));
      }
    }
  }
}

void Launcher::AdvanceRetirements(absl::Time now) {
  for (const auto& p : processes_) {
    if (p->phase != Phase::kRetiring || p->child == nullptr || now < p->retire_deadline) continue;
    if (!p->term_sent) {
      Emit(absl::StrCat(p->id, " did not finish draining in time: stopping it"));
      p->child->Signal(SIGTERM);
      p->term_sent = true;
      p->retire_deadline = now + StopGrace();
    } else {
      Emit(absl::StrCat(p->id, " (pid ", p->last_pid, ") ignored SIGTERM for ", Seconds(StopGrace()),
                        ": sending SIGKILL"));
      p->child->Signal(SIGKILL);
      p->retire_deadline = now + absl::Seconds(5);
    }
  }
}

void Launcher::StopAll() {
  const absl::Duration grace = StopGrace();
  auto stop_group = [&](ProcessRole role) {
    std::vector<Managed*> group;
    for (const auto& p : processes_) {
      if (p->role != role) continue;
      if (p->phase == Phase::kBackoff || p->phase == Phase::kRetiring) p->phase = Phase::kStopped;
      if (p->child == nullptr) continue;
      p->child->Signal(SIGTERM);
      group.push_back(p.get());
    }
    const absl::Time deadline = absl::Now() + grace;
    for (Managed* p : group) {
      const int left_ms = static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
      std::optional<ExitStatus> exit = p->child->WaitFor(left_ms);
      if (!exit.has_value()) {
        Emit(absl::StrCat(p->id, " (pid ", p->last_pid, ") did not exit within ", Seconds(grace),
                          " of SIGTERM: sending SIGKILL"));
        p->child->Signal(SIGKILL);
        exit = p->child->WaitFor(10000);
      }
      p->last_exit = exit;
      p->child.reset();  // reaps (SIGKILL + wait) if it is somehow still there
      p->phase = Phase::kStopped;
    }
  };
  int running = 0;
  for (const auto& p : processes_) running += p->child != nullptr ? 1 : 0;
  if (running > 0) Emit(absl::StrCat("stopping ", running, " process(es)"));
  // Decode workers first: they finish their requests in flight (lifecycle.drain_timeout_s), for
  // which they still need their selectors; then the selectors; the controller last, so that every
  // member deregisters from a live controller.
  stop_group(ProcessRole::kDecodeWorker);
  stop_group(ProcessRole::kSelector);
  stop_group(ProcessRole::kController);
  if (!run_dir_.empty()) {
    std::error_code ignored;
    fs::remove_all(run_dir_, ignored);
  }
  if (running > 0) Emit("every process is stopped");
  PublishSnapshot();
}

void Launcher::PublishSnapshot() {
  std::vector<ProcessSnapshot> snapshot;
  for (const auto& p : processes_) {
    ProcessSnapshot s;
    s.id = p->id;
    s.role = p->role;
    s.phase = p->phase;
    s.pid = p->last_pid;
    s.restarts = p->restarts;
    s.log_path = p->spec.log_path;
    s.last_exit = p->last_exit;
    snapshot.push_back(std::move(s));
  }
  absl::MutexLock lock(&snapshot_mutex_);
  snapshot_ = std::move(snapshot);
}

std::vector<ProcessSnapshot> Launcher::Processes() const {
  absl::MutexLock lock(&snapshot_mutex_);
  return snapshot_;
}

std::optional<ProcessSnapshot> Launcher::Process(const std::string& id) const {
  absl::MutexLock lock(&snapshot_mutex_);
  for (const ProcessSnapshot& s : snapshot_) {
    if (s.id == id) return s;
  }
  return std::nullopt;
}

}  // namespace asyncspade::launcher
