// `asyncspade generate`: one generation through a running deployment's gRPC API
// (GenerationService.Generate), streamed to stdout as it arrives.
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"
#include "tools/launcher/controller_client.h"

namespace asyncspade::cli {
namespace {

namespace serving = ::asyncspade::serving::v1;

constexpr char kDefaultEndpoint[] = "127.0.0.1:50051";

const std::vector<FlagSpec>& GenerateFlags() {
  static const std::vector<FlagSpec> flags = {
      {"endpoint", true, "the controller's gRPC address (default: $ASYNCSPADE_ENDPOINT, else 127.0.0.1:50051)"},
      {"prompt", true, "prompt text; the model's special tokens (e.g. BOS) are added"},
      {"chat", true, "one user message, rendered with the model's chat template"},
      {"prompt-ids", true, "prompt as comma-separated token ids, e.g. 1,403,407"},
      {"max-tokens", true, "new tokens to generate (default: the server's, 256)"},
      {"temperature", true, "sampling temperature (default 0: greedy)"},
      {"top-p", true, "nucleus sampling probability mass in (0, 1] (default 1: off)"},
      {"top-k", true, "keep the k most likely tokens (default 0: off)"},
      {"seed", true, "sampling seed (default: chosen by the server and printed)"},
      {"policy", true, "sparse-attention policy: dense, quest, oracle or asyncspade (default: the deployment's)"},
      {"budget", true, "selected tokens per (sequence, layer, KV head) (default: the deployment's)"},
      {"ignore-eos", false, "keep generating past the model's end-of-sequence token"},
      {"print-ids", false, "print the generated token ids, space-separated, on the last line"},
      {"quiet", false, "do not print the summary line on stderr"},
      {"help", false, "show this help"},
  };
  return flags;
}

constexpr char kSynopsis[] =
    "[--endpoint HOST:PORT] (--prompt TEXT | --chat TEXT | --prompt-ids 1,2,3) [--max-tokens N] [--temperature T] "
    "[--top-p P] [--top-k K] [--seed S] [--policy P] [--budget K] [--print-ids]";

absl::StatusOr<serving::GenerateRequest> BuildRequest(const Args& args) {
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", args.positional()[0],
                                                   "' (quote the prompt: --prompt \"...\")"));
  }
  serving::GenerateRequest request;
  const int inputs = int(args.Has("prompt")) + int(args.Has("chat")) + int(args.Has("prompt-ids"));
  if (inputs != 1) return absl::InvalidArgumentError("give exactly one of --prompt, --chat or --prompt-ids");
  if (auto prompt = args.Get("prompt")) {
    request.set_text(*prompt);
  } else if (auto chat = args.Get("chat")) {
    serving::ChatMessage* message = request.mutable_chat()->add_messages();
    message->set_role("user");
    message->set_content(*chat);
    request.mutable_chat()->set_add_generation_prompt(true);
  } else {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdList(*args.Get("prompt-ids")));
    if (ids.empty()) return absl::InvalidArgumentError("--prompt-ids is empty");
    for (int32_t id : ids) request.mutable_token_ids()->add_ids(id);
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> max_tokens, args.GetInt("max-tokens"));
  if (max_tokens.has_value()) {
    if (*max_tokens < 0) return absl::InvalidArgumentError("--max-tokens must be >= 0");
    request.mutable_stop()->set_max_tokens(static_cast<int32_t>(*max_tokens));
  }
  if (args.Has("ignore-eos")) request.mutable_stop()->set_ignore_eos(true);
  ASSIGN_OR_RETURN(std::optional<double> temperature, args.GetDouble("temperature"));
  ASSIGN_OR_RETURN(std::optional<double> top_p, args.GetDouble("top-p"));
  ASSIGN_OR_RETURN(std::optional<int64_t> top_k, args.GetInt("top-k"));
  ASSIGN_OR_RETURN(std::optional<int64_t> seed, args.GetInt("seed"));
  if (temperature) request.mutable_sampling()->set_temperature(static_cast<float>(*temperature));
  if (top_p) request.mutable_sampling()->set_top_p(static_cast<float>(*top_p));
  if (top_k) request.mutable_sampling()->set_top_k(static_cast<int32_t>(*top_k));
  if (seed) request.mutable_sampling()->set_seed(static_cast<uint64_t>(*seed));
  if (auto policy = args.Get("policy")) {
    ASSIGN_OR_RETURN(serving::SparsePolicy parsed, launcher::ParseSparsePolicy(*policy));
    request.mutable_sparse()->set_policy(parsed);
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> budget, args.GetInt("budget"));
  if (budget) request.mutable_sparse()->set_budget(static_cast<int32_t>(*budget));
  return request;
}

int GenerateCommand(int argc, char** argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandArgs(argc, argv, "generate", kSynopsis, GenerateFlags(), &exit_code);
  if (!args) return exit_code;
  absl::StatusOr<serving::GenerateRequest> request = BuildRequest(*args);
  if (!request.ok()) {
    std::fprintf(stderr, "asyncspade generate: %s\n(asyncspade generate --help lists the flags)\n",
                 std::string(request.status().message()).c_str());
    return 2;
  }
  const char* env_endpoint = std::getenv("ASYNCSPADE_ENDPOINT");
  const std::string endpoint =
      args->GetOr("endpoint", env_endpoint != nullptr && *env_endpoint != '\0' ? env_endpoint : kDefaultEndpoint);

  launcher::ControllerClient client(endpoint);
  std::string last_text;
  absl::StatusOr<launcher::GenerationOutcome> outcome =
      launcher::StreamGenerate(client, *request, [&last_text](const serving::GenerateChunk& chunk) {
        if (chunk.text().empty()) return;
        std::fwrite(chunk.text().data(), 1, chunk.text().size(), stdout);
        std::fflush(stdout);
        last_text = chunk.text();
      });
  if (!last_text.empty() && last_text.back() != '\n') std::fputc('\n', stdout);
  if (!outcome.ok()) {
    std::fflush(stdout);
    std::fprintf(stderr, "asyncspade generate: %s: %s\n", absl::StatusCodeToString(outcome.status().code()).c_str(),
                 std::string(outcome.status().message()).c_str());
    return 1;
  }
  if (args->Has("print-ids")) std::printf("%s\n", absl::StrJoin(outcome->token_ids, " ").c_str());
  std::fflush(stdout);
  if (!outcome->final.has_value()) {
    std::fprintf(stderr, "asyncspade generate: the stream ended without a final message\n");
    return 1;
  }
  const serving::GenerateFinal& final = *outcome->final;
  if (final.finish_reason() == serving::FINISH_REASON_ERROR) {
    std::fprintf(stderr, "asyncspade generate: the request failed: %s\n", final.error_message().c_str());
    return 1;
  }
  if (!args->Has("quiet")) {
    const serving::Timings& t = final.timings();
    const int n = final.usage().completion_tokens();
    std::fprintf(stderr,
                 "[prompt %d tokens; generated %d tokens; TTFT %.3f s; %.1f tok/s decode; finish: %s; seed %llu; "
                 "policy %s; served by %s; sparse layer-steps %lld, dense fallbacks %lld]\n",
                 final.usage().prompt_tokens(), n, t.first_token_seconds(),
                 t.mean_inter_token_seconds() > 0 ? 1.0 / t.mean_inter_token_seconds() : 0.0,
                 launcher::FinishReasonText(final.finish_reason()).c_str(),
                 static_cast<unsigned long long>(final.seed()), launcher::SparsePolicyName(final.policy()).c_str(),
                 final.served_by().c_str(), static_cast<long long>(final.sparse_stats().sparse_layer_steps()),
                 static_cast<long long>(final.sparse_stats().dense_fallbacks()));
  }
  return 0;
}

}  // namespace

ASYNCSPADE_REGISTER_COMMAND(generate, "stream one generation from a running deployment (gRPC)", GenerateCommand);

}  // namespace asyncspade::cli
