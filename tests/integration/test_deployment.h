// Helpers shared by the integration and fault tests: where the binaries and the shared models are,
// deployment YAMLs for stories260K, a launched deployment with its event log, process liveness.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "tools/launcher/controller_client.h"
#include "tools/launcher/launcher.h"
#include "tests/test_paths.h"

namespace asyncspade::testing {

namespace fs = std::filesystem;
namespace serving = ::asyncspade::serving::v1;
namespace control = ::asyncspade::control::v1;

inline std::string Stories260KDir() { return absl::StrCat(SharedDir(), "/models/stories260K"); }
inline std::string DemoModelDir() { return absl::StrCat(SourceDir(), "/models/SmolLM2-135M-Instruct"); }

inline bool Executable(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

// Empty when every process binary is built, else what is missing (the test skips with it).
inline std::string MissingProcessBinaries() {
  std::vector<std::string> missing;
  for (const char* name : {launcher::kControllerBinary, launcher::kDecodeWorkerBinary, launcher::kSelectorBinary}) {
    if (!Executable(absl::StrCat(BinaryDir(), "/", name))) missing.push_back(name);
  }
  if (missing.empty()) return "";
  return absl::StrCat(absl::StrJoin(missing, ", "), " not built in ", BinaryDir(),
                      " (build them, or set ASYNCSPADE_BINARY_DIR to the build directory)");
}

// Empty when the real processes can run on stories260K, else why not (tests skip with it).
inline std::string WhyNoStoriesDeployment() {
  if (!fs::exists(absl::StrCat(Stories260KDir(), "/config.json"))) {
    return absl::StrCat("stories260K is not at ", Stories260KDir(), " (set ASYNCSPADE_SHARED_DIR)");
  }
  return MissingProcessBinaries();
}

struct StoriesYamlOptions {
  std::string model_dir;  // default: Stories260KDir()
  int decode_workers = 1;
  std::string worker_restart = "on-failure";
  int worker_max_restarts = 3;
  int selectors = 0;
  std::string selector_restart = "on-failure";
  int selector_max_restarts = 3;
  std::string policy = "dense";
  int budget = 64;
  int sinks = 4;
  int recent = 16;
  int max_batch_size = 32;
  int max_seq_len = 512;
  int kv_blocks = 512;
  int startup_timeout_s = 60;
  int heartbeat_interval_ms = 100;
  int heartbeat_timeout_ms = 2000;
  int drain_timeout_s = 2;
  // false: sparse policies take the sparse path even on contexts their budget covers (so that
  // "budget >= context gives the dense tokens" really runs the selection and sparse kernels).
  bool dense_below_threshold = true;
};

inline std::string StoriesYaml(const StoriesYamlOptions& o) {
  std::string yaml = absl::StrCat(
      "model:\n  path: ", o.model_dir.empty() ? Stories260KDir() : o.model_dir, "\n  max_seq_len: ", o.max_seq_len,
      "\ncontroller:\n  host: 127.0.0.1\n  grpc_port: 0\n  http_port: 0\n",
      "decode_workers:\n  replicas: ", o.decode_workers, "\n  devices: cpu\n  max_batch_size: ", o.max_batch_size,
      "\n  kv_cache:\n    page_size: 16\n    blocks: ", o.kv_blocks, "\n  restart: ", o.worker_restart, "\n");
  if (o.worker_restart != "never") absl::StrAppend(&yaml, "  max_restarts: ", o.worker_max_restarts, "\n");
  absl::StrAppend(&yaml, "selectors:\n  replicas: ", o.selectors, "\n  devices: cpu\n  layers: auto\n  restart: ",
                  o.selector_restart, "\n");
  if (o.selector_restart != "never") absl::StrAppend(&yaml, "  max_restarts: ", o.selector_max_restarts, "\n");
  absl::StrAppend(&yaml, "sparse:\n  policy: ", o.policy, "\n  budget: ", o.budget, "\n  sinks: ", o.sinks,
                  "\n  recent: ", o.recent, "\n  quest_page_size: 16\n",
                  o.dense_below_threshold ? "" : "  dense_below_threshold: false\n",
                  "lifecycle:\n  heartbeat_interval_ms: ", o.heartbeat_interval_ms,
                  "\n  heartbeat_timeout_ms: ", o.heartbeat_timeout_ms, "\n  drain_timeout_s: ", o.drain_timeout_s,
                  "\n  startup_timeout_s: ", o.startup_timeout_s, "\n");
  return yaml;
}

// A deployment started through the launcher library, recording its event lines.
class LaunchedDeployment {
 public:
  explicit LaunchedDeployment(launcher::LauncherOptions options) : options_(std::move(options)) {
    options_.on_event = [this](const std::string& line) {
      std::lock_guard<std::mutex> lock(mutex_);
      events_.push_back(line);
      std::fprintf(stderr, "[launcher] %s\n", line.c_str());
    };
    if (options_.bin_dir.empty()) options_.bin_dir = BinaryDir();
  }
  ~LaunchedDeployment() {
    if (launcher_ != nullptr) (void)launcher_->Stop();
  }

  absl::Status Start() {
    absl::StatusOr<std::unique_ptr<launcher::Launcher>> created = launcher::Launcher::Create(options_);
    if (!created.ok()) return created.status();
    launcher_ = *std::move(created);
    absl::Status started = launcher_->Start();
    if (started.ok()) client_ = std::make_unique<launcher::ControllerClient>(launcher_->endpoints().grpc);
    return started;
  }

  launcher::Launcher& launcher() { return *launcher_; }
  launcher::ControllerClient& client() { return *client_; }

  std::vector<std::string> events() {
    std::lock_guard<std::mutex> lock(mutex_);
    return events_;
  }
  bool HasEvent(const std::string& needle) {
    for (const std::string& e : events()) {
      if (e.find(needle) != std::string::npos) return true;
    }
    return false;
  }
  std::string EventsText() { return absl::StrJoin(events(), "\n"); }

 private:
  launcher::LauncherOptions options_;
  std::unique_ptr<launcher::Launcher> launcher_;
  std::unique_ptr<launcher::ControllerClient> client_;
  std::mutex mutex_;
  std::vector<std::string> events_;
};

// Polls `condition` every 50 ms until it holds or `timeout` passes.
inline bool WaitUntil(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return condition();
}

// True while `pid` is a live process (a zombie counts as dead: it only waits to be reaped).
inline bool ProcessAlive(pid_t pid) {
  if (pid <= 0) return false;
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat) return false;
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = text.rfind(')');
  if (paren == std::string::npos || paren + 2 >= text.size()) return false;
  const char state = text[paren + 2];
  return state != 'Z' && state != 'X';
}

inline const control::Member* FindMember(const control::ListMembersResponse& r, const std::string& id) {
  for (const control::Member& m : r.members()) {
    if (m.member_id() == id) return &m;
  }
  return nullptr;
}

inline serving::GenerateRequest TokenIdsRequest(const std::vector<int32_t>& ids, int max_tokens) {
  serving::GenerateRequest request;
  for (int32_t id : ids) request.mutable_token_ids()->add_ids(id);
  request.mutable_stop()->set_max_tokens(max_tokens);
  request.mutable_sampling()->set_temperature(0);
  return request;
}

// grpc.health.v1.Health/Check for `service` ("" = the server): 1 SERVING, 2 NOT_SERVING, 3
// SERVICE_UNKNOWN, 0 UNKNOWN; -1 when the call fails. Sent as raw bytes: the health proto's C++
// stubs are not shipped by Debian's gRPC.
inline int GrpcHealthStatus(const std::string& endpoint, const std::string& service) {
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  std::string request_bytes;
  if (!service.empty()) {  // field 1 (string), length-delimited
    request_bytes.push_back(0x0a);
    request_bytes.push_back(static_cast<char>(service.size()));
    request_bytes += service;
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  std::mutex mutex;
  std::condition_variable done;
  std::optional<grpc::Status> status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mutex);
                   status = s;
                   done.notify_all();
                 });
  std::unique_lock<std::mutex> lock(mutex);
  done.wait(lock, [&] { return status.has_value(); });
  if (!status->ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.empty()) return 0;  // the default value, UNKNOWN, is not written
  if (bytes.size() < 2 || bytes[0] != 0x08) return -1;
  return static_cast<unsigned char>(bytes[1]);
}

// Streams `requests` concurrently, one thread each; results in the same order.
inline std::vector<absl::StatusOr<launcher::GenerationOutcome>> GenerateConcurrently(
    const std::string& endpoint, const std::vector<serving::GenerateRequest>& requests) {
  std::vector<absl::StatusOr<launcher::GenerationOutcome>> results(requests.size(),
                                                                    absl::UnknownError("not run"));
  launcher::ControllerClient client(endpoint);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = launcher::StreamGenerate(client, requests[i]); });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

// Runs a command (through /bin/sh), returning its exit code and stdout.
inline int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The ids `asyncspade run` generates greedily for a prompt of token ids (its --print-ids line).
inline absl::StatusOr<std::vector<int32_t>> OfflineRunIds(const std::string& model_dir, const std::vector<int32_t>& ids,
                                                          int max_tokens) {
  const std::string command =
      absl::StrCat(BinaryDir(), "/asyncspade run --model ", model_dir, " --prompt-ids ", absl::StrJoin(ids, ","),
                   " --max-tokens ", max_tokens, " --print-ids 2>/dev/null");
  std::string output;
  const int rc = RunCommand(command, &output);
  if (rc != 0) return absl::InternalError(absl::StrCat("`", command, "` exited with ", rc, ": ", output));
  std::vector<std::string> lines = absl::StrSplit(output, '\n', absl::SkipEmpty());
  if (lines.empty()) return absl::InternalError(absl::StrCat("`", command, "` printed nothing"));
  std::vector<int32_t> generated;
  for (absl::string_view word : absl::StrSplit(lines.back(), ' ', absl::SkipEmpty())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(word, &id)) {
      return absl::InternalError(absl::StrCat("`", command, "`: last line is not ids: ", lines.back()));
    }
    generated.push_back(id);
  }
  return generated;
}

}  // namespace asyncspade::testing
