// `asyncspade bench`: a load generator for a running deployment. Streams requests through the
// gRPC API at one or more concurrency levels and reports throughput (generated tokens per second
// over the wall time), TTFT, TPOT (client-side mean inter-token latency per request) and end-to-end
// latency. Prints a table; --json writes the same numbers.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"
#include "tools/launcher/controller_client.h"

namespace asyncspade::cli {
namespace {

namespace serving = ::asyncspade::serving::v1;

constexpr char kDefaultEndpoint[] = "127.0.0.1:50051";
constexpr char kDefaultPrompt[] = "Write a short story about a robot who learns to paint.";

const std::vector<FlagSpec>& BenchFlags() {
  static const std::vector<FlagSpec> flags = {
      {"endpoint", true, "the controller's gRPC address (default: $ASYNCSPADE_ENDPOINT, else 127.0.0.1:50051)"},
      {"concurrency", true, "concurrent streams; a comma-separated list runs one level after another (default 1)"},
      {"requests", true, "requests per level (default: 2 x concurrency, at least 4)"},
      {"max-tokens", true, "new tokens per request (default 64)"},
      {"chat", true, absl::StrCat("the prompt as one chat message (default: \"", kDefaultPrompt, "\")")},
      {"prompt", true, "the prompt as plain text instead of a chat message"},
      {"prompt-ids", true, "the prompt as comma-separated token ids"},
      {"policy", true, "sparse-attention policy of every request (default: the deployment's)"},
      {"budget", true, "sparse budget of every request (default: the deployment's)"},
      {"stop-at-eos", false, "stop at the model's EOS (default: ignore it, so every request makes max-tokens)"},
      {"warmup", true, "requests sent (one at a time) before measuring (default 1)"},
      {"json", true, "also write the results as JSON to this file"},
      {"help", false, "show this help"},
  };
  return flags;
}

constexpr char kSynopsis[] =
    "[--endpoint HOST:PORT] [--concurrency N[,N...]] [--requests M] [--max-tokens T] [--chat TEXT | --prompt TEXT "
    "| --prompt-ids IDS] [--policy P] [--json FILE]";

struct RequestResult {
  bool ok = false;
  std::string error;
  int prompt_tokens = 0;
  int tokens = 0;
  double ttft = 0;
  std::optional<double> tpot;
  double e2e = 0;
  double server_tpot = 0;
};

struct Distribution {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;
  int count = 0;
};

Distribution Summarize(std::vector<double> values) {
  Distribution d;
  if (values.empty()) return d;
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  d.count = static_cast<int>(values.size());
  d.mean = sum / d.count;
  auto quantile = [&values](double q) {
    const size_t index = static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5);
    return values[std::min(index, values.size() - 1)];
  };
  d.p50 = quantile(0.5);
  d.p90 = quantile(0.9);
  d.p99 = quantile(0.99);
  return d;
}

nlohmann::json ToJson(const Distribution& d) {
  return {{"mean", d.mean}, {"p50", d.p50}, {"p90", d.p90}, {"p99", d.p99}, {"count", d.count}};
}

struct LevelResult {
  int concurrency = 0;
  int requests = 0;
  int errors = 0;
  std::string first_error;
  int64_t output_tokens = 0;
  double wall_seconds = 0;
  Distribution ttft, tpot, e2e, server_tpot;
  double prompt_tokens_mean = 0;
};

RequestResult RunOne(launcher::ControllerClient& client, const serving::GenerateRequest& request) {
  RequestResult r;
  absl::StatusOr<launcher::GenerationOutcome> outcome = launcher::StreamGenerate(client, request);
  if (!outcome.ok()) {
    r.error = std::string(outcome.status().message());
    return r;
  }
  if (!outcome->final.has_value() || outcome->final->finish_reason() == serving::FINISH_REASON_ERROR) {
    r.error = outcome->final.has_value() ? outcome->final->error_message() : "the stream ended without a final message";
    return r;
  }
  r.ok = true;
  r.prompt_tokens = outcome->final->usage().prompt_tokens();
  r.tokens = static_cast<int>(outcome->token_ids.size());
  r.ttft = outcome->first_token_seconds();
  r.tpot = outcome->mean_inter_token_seconds();
  r.e2e = outcome->total_seconds;
  r.server_tpot = outcome->final->timings().mean_inter_token_seconds();
  return r;
}

LevelResult RunLevel(launcher::ControllerClient& client, const serving::GenerateRequest& request, int concurrency,
                     int requests) {
  std::vector<RequestResult> results(static_cast<size_t>(requests));
  std::atomic<int> next{0};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&] {
      for (int i = next.fetch_add(1); i < requests; i = next.fetch_add(1)) {
        results[static_cast<size_t>(i)] = RunOne(client, request);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  LevelResult level;
  level.concurrency = concurrency;
  level.requests = requests;
  level.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::vector<double> ttft, tpot, e2e, server_tpot;
  double prompt_sum = 0;
  for (const RequestResult& r : results) {
    if (!r.ok) {
      if (level.errors++ == 0) level.first_error = r.error;
      continue;
    }
    level.output_tokens += r.tokens;
    prompt_sum += r.prompt_tokens;
    ttft.push_back(r.ttft);
    if (r.tpot.has_value()) tpot.push_back(*r.tpot);
    e2e.push_back(r.e2e);
    if (r.server_tpot > 0) server_tpot.push_back(r.server_tpot);
  }
  level.ttft = Summarize(ttft);
  level.tpot = Summarize(tpot);
  level.e2e = Summarize(e2e);
  level.server_tpot = Summarize(server_tpot);
  if (!e2e.empty()) level.prompt_tokens_mean = prompt_sum / static_cast<double>(e2e.size());
  return level;
}

absl::StatusOr<std::vector<int>> ParseLevels(const std::string& text) {
  std::vector<int> levels;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int n = 0;
    if (!absl::SimpleAtoi(part, &n) || n < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--concurrency: '", std::string(part), "' is not a positive integer (e.g. 1,8,32)"));
    }
    levels.push_back(n);
  }
  if (levels.empty()) return absl::InvalidArgumentError("--concurrency is empty");
  return levels;
}

int BenchCommand(int argc, char** argv) {
  auto args = Args::Parse(argc, argv, 1, BenchFlags());
  auto usage_error = [](const std::string& message) {
    std::fprintf(stderr, "asyncspade bench: %s\n(asyncspade bench --help lists the flags)\n", message.c_str());
    return 2;
  };
  if (!args.ok()) return usage_error(std::string(args.status().message()));
  if (args->Has("help")) {
    std::fputs(Args::Usage("bench", kSynopsis, BenchFlags()).c_str(), stdout);
    return 0;
  }
  if (!args->positional().empty()) return usage_error(absl::StrCat("unexpected argument '", args->positional()[0], "'"));
  absl::StatusOr<std::vector<int>> levels = ParseLevels(args->GetOr("concurrency", "1"));
  if (!levels.ok()) return usage_error(std::string(levels.status().message()));
  absl::StatusOr<std::optional<int64_t>> requests_flag = args->GetInt("requests");
  absl::StatusOr<std::optional<int64_t>> max_tokens = args->GetInt("max-tokens");
  absl::StatusOr<std::optional<int64_t>> warmup = args->GetInt("warmup");
  absl::StatusOr<std::optional<int64_t>> budget = args->GetInt("budget");
  for (const auto* v : {&requests_flag, &max_tokens, &warmup, &budget}) {
    if (!v->ok()) return usage_error(std::string(v->status().message()));
    if (v->value().has_value() && *v->value() < 0) return usage_error("counts must be >= 0");
  }

  serving::GenerateRequest request;
  const int inputs = int(args->Has("prompt")) + int(args->Has("chat")) + int(args->Has("prompt-ids"));
  if (inputs > 1) return usage_error("give at most one of --prompt, --chat, --prompt-ids");
  std::string prompt_description;
  if (auto prompt = args->Get("prompt")) {
    request.set_text(*prompt);
    prompt_description = absl::StrCat("text \"", *prompt, "\"");
  } else if (auto ids = args->Get("prompt-ids")) {
    absl::StatusOr<std::vector<int32_t>> parsed = ParseIdList(*ids);
    if (!parsed.ok() || parsed->empty()) return usage_error("--prompt-ids must be comma-separated token ids");
    for (int32_t id : *parsed) request.mutable_token_ids()->add_ids(id);
    prompt_description = absl::StrCat(parsed->size(), " token ids");
  } else {
    const std::string chat = args->GetOr("chat", kDefaultPrompt);
    serving::ChatMessage* message = request.mutable_chat()->add_messages();
    message->set_role("user");
    message->set_content(chat);
    request.mutable_chat()->set_add_generation_prompt(true);
    prompt_description = absl::StrCat("chat \"", chat, "\"");
  }
  const int tokens = static_cast<int>(max_tokens->value_or(64));
  request.mutable_stop()->set_max_tokens(tokens);
  request.mutable_stop()->set_ignore_eos(!args->Has("stop-at-eos"));
  if (auto policy = args->Get("policy")) {
    absl::StatusOr<serving::SparsePolicy> parsed = launcher::ParseSparsePolicy(*policy);
    if (!parsed.ok()) return usage_error(std::string(parsed.status().message()));
    request.mutable_sparse()->set_policy(*parsed);
  }
  if (budget->has_value()) request.mutable_sparse()->set_budget(static_cast<int32_t>(**budget));

  const char* env_endpoint = std::getenv("ASYNCSPADE_ENDPOINT");
  const std::string endpoint =
      args->GetOr("endpoint", env_endpoint != nullptr && *env_endpoint != '\0' ? env_endpoint : kDefaultEndpoint);
  launcher::ControllerClient client(endpoint);
  absl::StatusOr<serving::ModelInfo> model = client.GetModelInfo();
  if (!model.ok()) {
    const absl::Status s = launcher::ExplainUnreachable(model.status(), endpoint);
    std::fprintf(stderr, "asyncspade bench: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  const std::string policy_name = request.has_sparse() ? launcher::SparsePolicyName(request.sparse().policy())
                                                       : launcher::SparsePolicyName(model->default_policy());
  std::fprintf(stderr, "asyncspade bench: %s, policy %s, %s, %d new tokens per request\n", model->name().c_str(),
               policy_name.c_str(), prompt_description.c_str(), tokens);
  for (int64_t i = 0; i < warmup->value_or(1); ++i) {
    RequestResult r = RunOne(client, request);
    if (!r.ok) {
      std::fprintf(stderr, "asyncspade bench: the warm-up request failed: %s\n", r.error.c_str());
      return 1;
    }
  }

  std::vector<LevelResult> results;
  std::printf("%11s %8s %6s %8s %8s %9s %10s %10s %10s %10s %10s\n", "concurrency", "requests", "errors",
              "tokens", "wall_s", "tok/s", "ttft_ms", "ttft_p99", "tpot_ms", "tpot_p99", "e2e_s");
  for (int concurrency : *levels) {
    const int requests = requests_flag->has_value() ? static_cast<int>(**requests_flag)
                                                    : std::max(4, 2 * concurrency);
    LevelResult level = RunLevel(client, request, concurrency, requests);
    std::printf("%11d %8d %6d %8lld %8.2f %9.1f %10.1f %10.1f %10.2f %10.2f %10.2f\n", level.concurrency,
                level.requests, level.errors, static_cast<long long>(level.output_tokens), level.wall_seconds,
                level.wall_seconds > 0 ? static_cast<double>(level.output_tokens) / level.wall_seconds : 0.0,
                1e3 * level.ttft.mean, 1e3 * level.ttft.p99, 1e3 * level.tpot.mean, 1e3 * level.tpot.p99,
                level.e2e.mean);
    std::fflush(stdout);
    if (level.errors > 0) {
      std::fprintf(stderr, "asyncspade bench: %d request(s) failed at concurrency %d; first: %s\n", level.errors,
                   concurrency, level.first_error.c_str());
    }
    results.push_back(std::move(level));
  }

  int failed = 0;
  for (const LevelResult& l : results) failed += l.errors;
  if (auto path = args->Get("json")) {
    nlohmann::json out = {{"endpoint", endpoint},
                          {"model", model->name()},
                          {"policy", policy_name},
                          {"prompt", prompt_description},
                          {"max_tokens", tokens},
                          {"ignore_eos", !args->Has("stop-at-eos")},
                          {"levels", nlohmann::json::array()}};
    for (const LevelResult& l : results) {
      out["levels"].push_back({{"concurrency", l.concurrency},
                               {"requests", l.requests},
                               {"errors", l.errors},
                               {"prompt_tokens_mean", l.prompt_tokens_mean},
                               {"output_tokens", l.output_tokens},
                               {"wall_seconds", l.wall_seconds},
                               {"throughput_tokens_per_second",
                                l.wall_seconds > 0 ? static_cast<double>(l.output_tokens) / l.wall_seconds : 0.0},
                               {"ttft_seconds", ToJson(l.ttft)},
                               {"tpot_seconds", ToJson(l.tpot)},
                               {"server_mean_inter_token_seconds", ToJson(l.server_tpot)},
                               {"e2e_seconds", ToJson(l.e2e)}});
    }
    std::ofstream file(*path, std::ios::trunc);
    file << out.dump(2) << "\n";
    if (!file.good()) {
      std::fprintf(stderr, "asyncspade bench: cannot write --json %s\n", path->c_str());
      return 1;
    }
  }
  return failed > 0 ? 1 : 0;
}

}  // namespace

ASYNCSPADE_REGISTER_COMMAND(bench, "load-test a running deployment: throughput, TTFT, TPOT (gRPC)", BenchCommand);

}  // namespace asyncspade::cli
