// `asyncspade demo`: launches the CPU deployment (deploy/local.yaml, compiled into the binary),
// streams one chat answer through the gRPC API, prints a summary and shuts the deployment down.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/config/deployment_config.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"
#include "tools/launcher/controller_client.h"
#include "tools/launcher/launcher.h"
#include "tools/launcher/stop_signals.h"
#include "yaml-cpp/yaml.h"

#ifndef ASYNCSPADE_SOURCE_DIR
#define ASYNCSPADE_SOURCE_DIR "."
#endif

namespace asyncspade::cli {
namespace {

namespace fs = std::filesystem;
namespace serving = ::asyncspade::serving::v1;

constexpr char kDefaultQuestion[] = "Explain in two sentences why the sky is blue.";

const std::vector<FlagSpec>& DemoFlags() {
  static const std::vector<FlagSpec> flags = {
      {"yaml", true, "deployment YAML to launch (default: deploy/local.yaml as compiled into this binary)"},
      {"chat", true, absl::StrCat("the question (default: \"", kDefaultQuestion, "\")")},
      {"max-tokens", true, "new tokens at most (default 128)"},
      {"policy", true, "sparse-attention policy of the request (default: the deployment's)"},
      {"keep-running", false, "keep the deployment serving after the demo, until Ctrl-C"},
      {"build-dir", true, "build directory whose bin/ holds the process binaries (default: this binary's directory)"},
      {"log-dir", true, "directory for the process logs (default: a new directory under $TMPDIR)"},
      {"help", false, "show this help"},
  };
  return flags;
}

constexpr char kSynopsis[] = "[--yaml FILE] [--chat TEXT] [--max-tokens N] [--policy P] [--keep-running]";

void Say(const std::string& message) {
  std::fprintf(stderr, "asyncspade demo: %s\n", message.c_str());
  std::fflush(stderr);
}

std::string SourceDir() {
  const char* env = std::getenv("ASYNCSPADE_SOURCE_DIR");
  return env != nullptr && *env != '\0' ? env : ASYNCSPADE_SOURCE_DIR;
}

// The embedded deploy/local.yaml with its relative model path made absolute (the file is written
// to a temporary directory, where the relative path would mean nothing).
absl::StatusOr<std::string> WriteEmbeddedDeployment(const std::string& directory) {
  const std::string deploy_dir = absl::StrCat(SourceDir(), "/deploy");
  const std::string text(EmbeddedLocalDeploymentYaml());
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(text, deploy_dir, "deploy/local.yaml (embedded)");
  if (!config.ok()) return config.status();
  std::error_code error;
  if (!config->model.path.empty() && !fs::is_directory(config->model.path, error)) {
    return absl::NotFoundError(absl::StrCat("the demo model is not at ", config->model.path,
                                            "; run ./tools/setup.sh to fetch it (or set ASYNCSPADE_SOURCE_DIR to the "
                                            "repository, or give --yaml FILE)"));
  }
  std::string rewritten;
  try {
    YAML::Node root = YAML::Load(text);
    root["model"]["path"] = config->model.path;
    if (!config->model.tokenizer.empty() && root["model"]["tokenizer"]) {
      root["model"]["tokenizer"] = config->model.tokenizer;
    }
    YAML::Emitter out;
    out << root;
    rewritten = out.c_str();
  } catch (const YAML::Exception& e) {
    return absl::InternalError(absl::StrCat("rewriting the embedded deploy/local.yaml failed: ", e.what()));
  }
  const std::string path = absl::StrCat(directory, "/local.yaml");
  std::ofstream file(path, std::ios::trunc);
  file << rewritten << "\n";
  if (!file.good()) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return path;
}

int DemoCommand(int argc, char** argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandArgs(argc, argv, "demo", kSynopsis, DemoFlags(), &exit_code);
  if (!args) return exit_code;
  absl::StatusOr<std::optional<int64_t>> max_tokens = args->GetInt("max-tokens");
  if (!max_tokens.ok() || (max_tokens->has_value() && **max_tokens < 1)) {
    Say("--max-tokens must be a positive integer");
    return 2;
  }
  std::optional<serving::SparsePolicy> policy;
  if (auto name = args->Get("policy")) {
    absl::StatusOr<serving::SparsePolicy> parsed = launcher::ParseSparsePolicy(*name);
    if (!parsed.ok()) {
      Say(std::string(parsed.status().message()));
      return 2;
    }
    policy = *parsed;
  }

  std::string temp_dir;
  std::string yaml = args->GetOr("yaml", "");
  if (yaml.empty()) {
    std::string pattern = (fs::temp_directory_path() / "asyncspade-demo-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      Say(absl::StrCat("cannot create a temporary directory under ", fs::temp_directory_path().string()));
      return 1;
    }
    temp_dir = pattern;
    absl::StatusOr<std::string> written = WriteEmbeddedDeployment(temp_dir);
    if (!written.ok()) {
      Say(std::string(written.status().message()));
      std::error_code ignored;
      fs::remove_all(temp_dir, ignored);
      return 1;
    }
    yaml = *written;
  }
  auto cleanup = [&temp_dir] {
    std::error_code ignored;
    if (!temp_dir.empty()) fs::remove_all(temp_dir, ignored);
  };

  launcher::LauncherOptions options;
  options.config_path = yaml;
  if (auto build_dir = args->Get("build-dir")) options.bin_dir = absl::StrCat(*build_dir, "/bin");
  options.log_dir = args->GetOr("log-dir", "");
  options.on_event = [](const std::string& line) { Say(line); };
  absl::StatusOr<std::unique_ptr<launcher::Launcher>> created = launcher::Launcher::Create(options);
  if (!created.ok()) {
    Say(std::string(created.status().message()));
    cleanup();
    return 2;
  }
  launcher::Launcher& deployment = **created;
  launcher::StopSignalHandler stop_on_signals(&deployment, "asyncspade demo");

  Say(absl::StrCat("launching ", args->Has("yaml") ? yaml : "deploy/local.yaml", " (logs in ",
                   deployment.log_dir(), "); loading the model takes a few seconds"));
  if (absl::Status started = deployment.Start(); !started.ok()) {
    if (started.code() != absl::StatusCode::kCancelled) Say(absl::StrCat("launch failed: ", started.message()));
    cleanup();
    return started.code() == absl::StatusCode::kCancelled ? 0 : 1;
  }
  const launcher::Endpoints& endpoints = deployment.endpoints();
  std::printf("grpc: %s\nhttp: %s\n", endpoints.grpc.c_str(), endpoints.http.c_str());

  const std::string question = args->GetOr("chat", kDefaultQuestion);
  serving::GenerateRequest request;
  serving::ChatMessage* message = request.mutable_chat()->add_messages();
  message->set_role("user");
  message->set_content(question);
  request.mutable_chat()->set_add_generation_prompt(true);
  request.mutable_stop()->set_max_tokens(static_cast<int32_t>(max_tokens->value_or(128)));
  if (policy.has_value()) request.mutable_sparse()->set_policy(*policy);
  std::printf("\n> %s\n", question.c_str());
  std::fflush(stdout);

  launcher::ControllerClient client(launcher::DialableAddress(endpoints.grpc));
  absl::StatusOr<launcher::GenerationOutcome> outcome =
      launcher::StreamGenerate(client, request, [](const serving::GenerateChunk& chunk) {
        std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
        std::fflush(stdout);
      });
  std::printf("\n\n");
  exit_code = 0;
  if (!outcome.ok()) {
    Say(absl::StrCat("generation failed: ", outcome.status().message()));
    exit_code = 1;
  } else if (!outcome->final.has_value() || outcome->final->finish_reason() == serving::FINISH_REASON_ERROR) {
    Say(absl::StrCat("generation failed: ",
                     outcome->final.has_value() ? outcome->final->error_message() : "no final message"));
    exit_code = 1;
  } else {
    const serving::GenerateFinal& final = *outcome->final;
    const std::optional<double> tpot = outcome->mean_inter_token_seconds();
    std::printf("[%d prompt tokens, %d generated; TTFT %.3f s; %.1f tokens/s; finish: %s; policy %s; sparse "
                "layer-steps %lld, dense fallbacks %lld]\n",
                final.usage().prompt_tokens(), final.usage().completion_tokens(), outcome->first_token_seconds(),
                tpot.has_value() && *tpot > 0 ? 1.0 / *tpot : 0.0,
                launcher::FinishReasonText(final.finish_reason()).c_str(),
                launcher::SparsePolicyName(final.policy()).c_str(),
                static_cast<long long>(final.sparse_stats().sparse_layer_steps()),
                static_cast<long long>(final.sparse_stats().dense_fallbacks()));
  }
  std::fflush(stdout);

  if (args->Has("keep-running") && exit_code == 0) {
    std::printf("serving on grpc %s and %s (OpenAI API) until Ctrl-C; try:\n"
                "  ./tools/asyncspade generate --endpoint %s --chat \"Tell me a story\"\n"
                "  ./tools/asyncspade ctl --endpoint %s status\n",
                endpoints.grpc.c_str(), endpoints.http.c_str(), endpoints.grpc.c_str(), endpoints.grpc.c_str());
    std::fflush(stdout);
    if (absl::Status ended = deployment.Wait(); !ended.ok()) {
      Say(absl::StrCat("the deployment failed: ", ended.message()));
      exit_code = 1;
    }
  } else {
    (void)deployment.Stop();
  }
  cleanup();
  return exit_code;
}

}  // namespace

ASYNCSPADE_REGISTER_COMMAND(demo, "launch deploy/local.yaml on the CPU and stream one chat answer", DemoCommand);

}  // namespace asyncspade::cli
