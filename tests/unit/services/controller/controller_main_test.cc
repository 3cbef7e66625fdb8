// The asyncspade-controller binary: flags, the ready file, clean shutdown on SIGTERM, and a port
// already in use. Runs the real process (built next to this test).
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "asyncspade/serving/v1/generation.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_paths.h"

extern char** environ;

namespace asyncspade::controller {
namespace {

using ::asyncspade::testing::BinaryDir;  // tests/test_paths.h

class ControllerProcess {
 public:
  explicit ControllerProcess(std::vector<std::string> args) {
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int error = posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ);
    if (error != 0) pid_ = -1;
  }
  ~ControllerProcess() {
    if (pid_ > 0 && !exit_code_.has_value()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  bool started() const { return pid_ > 0; }
  void Signal(int signal) { kill(pid_, signal); }
  // The exit code, waiting up to `timeout`; nullopt if it is still running.
  std::optional<int> Wait(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!exit_code_.has_value()) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      if (absl::Now() >= deadline) break;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return exit_code_;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

class ControllerMainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    binary_ = std::filesystem::path(BinaryDir()) / "asyncspade-controller";
    if (!std::filesystem::exists(binary_)) {
      GTEST_SKIP() << binary_ << " is not built; build the asyncspade-controller target first";
    }
    dir_ = std::filesystem::temp_directory_path() / absl::StrCat("controller_main_test.", getpid());
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ / "deployment.yaml") << R"(
model:
  random_weights: qwen3-0.6b
  max_seq_len: 4096
decode_workers:
  devices: cpu
  kv_cache:
    blocks: 512
selectors:
  replicas: 1
  devices: cpu
sparse:
  policy: dense
lifecycle:
  drain_timeout_s: 2
)";
  }
  void TearDown() override {
    std::error_code ignored;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ignored);
  }

  std::optional<nlohmann::json> WaitForReadyFile(const std::filesystem::path& path, ControllerProcess& process) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      if (std::filesystem::exists(path)) {
        std::ifstream in(path);
        return nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      }
      if (process.Wait(absl::ZeroDuration()).has_value()) return std::nullopt;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return std::nullopt;
  }

  std::filesystem::path binary_;
  std::filesystem::path dir_;
};

TEST_F(ControllerMainTest, WritesReadyFileServesAndStopsCleanlyOnSigterm) {
  const std::filesystem::path ready = dir_ / "ready.json";
  ControllerProcess process({binary_.string(), "--config", (dir_ / "deployment.yaml").string(), "--ready-file",
                             ready.string(), "--metrics-port", "0"});
  ASSERT_TRUE(process.started());
  const std::optional<nlohmann::json> endpoints = WaitForReadyFile(ready, process);
  ASSERT_TRUE(endpoints.has_value() && endpoints->is_object()) << "no ready file within 30 s";
  ASSERT_TRUE((*endpoints)["grpc"].is_string());
  EXPECT_THAT((*endpoints)["grpc"].get<std::string>(), ::testing::StartsWith("127.0.0.1:"));
  EXPECT_THAT((*endpoints)["http"].get<std::string>(), ::testing::StartsWith("http://127.0.0.1:"));
  EXPECT_THAT((*endpoints)["metrics"].get<std::string>(), ::testing::EndsWith("/metrics"));
  EXPECT_NE((*endpoints)["metrics"].get<std::string>(), (*endpoints)["http"].get<std::string>() + "/metrics")
      << "--metrics-port puts metrics on their own listener";

  auto stub = serving::v1::GenerationService::NewStub(
      grpc::CreateChannel((*endpoints)["grpc"].get<std::string>(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  serving::v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.name(), "qwen3-0.6b");
  EXPECT_EQ(info.num_layers(), 28);

  process.Signal(SIGTERM);
  const std::optional<int> code = process.Wait(absl::Seconds(20));
  ASSERT_TRUE(code.has_value()) << "still running 20 s after SIGTERM";
  EXPECT_EQ(*code, 0);
  EXPECT_FALSE(std::filesystem::exists(ready)) << "the ready file is removed on exit";
}

TEST_F(ControllerMainTest, PortInUseAndBadFlagsFail) {
  const std::filesystem::path ready = dir_ / "first.json";
  ControllerProcess first(
      {binary_.string(), "--config", (dir_ / "deployment.yaml").string(), "--ready-file", ready.string()});
  const std::optional<nlohmann::json> endpoints = WaitForReadyFile(ready, first);
  ASSERT_TRUE(endpoints.has_value() && endpoints->is_object());
  const std::string grpc = (*endpoints)["grpc"].get<std::string>();
  const std::string port = grpc.substr(grpc.rfind(':') + 1);

  ControllerProcess clash({binary_.string(), "--config", (dir_ / "deployment.yaml").string(), "--grpc-port", port});
  const std::optional<int> clash_code = clash.Wait(absl::Seconds(20));
  ASSERT_TRUE(clash_code.has_value()) << "a second controller on a port in use must fail, not share it";
  EXPECT_EQ(*clash_code, 1);

  ControllerProcess no_config({binary_.string()});
  EXPECT_EQ(no_config.Wait(absl::Seconds(20)), 2);
  ControllerProcess unknown_flag(
      {binary_.string(), "--config", (dir_ / "deployment.yaml").string(), "--gprc-port", "1"});
  EXPECT_EQ(unknown_flag.Wait(absl::Seconds(20)), 2);

  first.Signal(SIGINT);
  EXPECT_EQ(first.Wait(absl::Seconds(20)), 0);
}

}  // namespace
}  // namespace asyncspade::controller
