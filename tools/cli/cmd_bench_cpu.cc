// `asyncspade bench-cpu`: prefill and decode throughput of the CPU reference engine for a few
// batch sizes. Prints a table and, with --json, writes the same numbers as JSON.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "kernels/gemm.h"
#include "nlohmann/json.hpp"
#include "services/decode_worker/engine/generation_engine.h"
#include "services/decode_worker/model/cpu_model_runner.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"

namespace asyncspade::cli {
namespace {

const std::vector<FlagSpec>& BenchFlags() {
  static const std::vector<FlagSpec> flags = {
      {"model", true, "model directory"},
      {"prompt-len", true, "prompt tokens per request (default 128)"},
      {"decode-tokens", true, "new tokens per request (default 64)"},
      {"batch-sizes", true, "comma-separated batch sizes (default 1,8)"},
      {"json", true, "also write the results to this JSON file"},
      {"help", false, "show this help"},
  };
  return flags;
}

struct BenchResult {
  int batch = 0;
  int prompt_len = 0;
  int decode_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double cpu_seconds = 0;  // process CPU time over prefill + decode: shows contention on shared machines
  double prefill_tokens_per_second() const { return batch * prompt_len / prefill_seconds; }
  // The first new token comes out of the prefill step; the rest are decode steps.
  double decode_tokens_per_second() const { return batch * (decode_tokens - 1) / decode_seconds; }
  double ms_per_decode_step() const { return 1e3 * decode_seconds / (decode_tokens - 1); }
  double cpu_percent() const { return 100.0 * cpu_seconds / (prefill_seconds + decode_seconds); }
};

std::string BlasDescription() {
  const std::string advice = kernels::cpu::BlasCoreAdvice();
  return advice.empty() ? "BLAS kernels fit this CPU" : "WARNING: generic BLAS kernels, see OPENBLAS_CORETYPE";
}

double ProcessCpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

absl::StatusOr<BenchResult> RunOne(std::shared_ptr<const CpuModelWeights> weights, int batch, int prompt_len,
                                   int decode_tokens) {
  const ModelConfig& config = weights->config();
  CpuModelRunnerOptions runner_options;
  runner_options.num_kv_blocks = batch * ((prompt_len + decode_tokens + 15) / 16 + 1);
  ASSIGN_OR_RETURN(auto runner, CpuModelRunner::Create(std::move(weights), runner_options));
  GenerationEngineOptions options;
  options.max_batch_size = batch;
  options.max_batch_tokens = batch * prompt_len;  // the whole prefill in one forward
  ASSIGN_OR_RETURN(auto engine, GenerationEngine::Create(std::move(runner), options));

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token(0, config.vocab_size - 1);
  for (int b = 0; b < batch; ++b) {
    GenerationRequest request;
    for (int i = 0; i < prompt_len; ++i) request.prompt_ids.push_back(token(rng));
    request.max_tokens = decode_tokens;
    request.ignore_eos = true;  // every request runs the full length
    RETURN_IF_ERROR(engine->Submit(b, std::move(request)));
  }
  using Clock = std::chrono::steady_clock;
  BenchResult result{batch, prompt_len, decode_tokens};
  const double cpu0 = ProcessCpuSeconds();
  auto t0 = Clock::now();
  ASSIGN_OR_RETURN(auto first, engine->Step());
  auto t1 = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  while (engine->HasWork()) {
    ASSIGN_OR_RETURN(auto events, engine->Step());
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  result.cpu_seconds = ProcessCpuSeconds() - cpu0;
  return result;
}

int BenchCpuCommand(int argc, char** argv) {
  auto args = Args::Parse(argc, argv, 1, BenchFlags());
  const std::string synopsis = "--model DIR [--prompt-len N] [--decode-tokens N] [--batch-sizes 1,8] [--json FILE]";
  if (!args.ok() || args->Has("help") || !args->Has("model")) {
    const bool help = args.ok() && args->Has("help");
    if (!help) {
      std::fprintf(stderr, "asyncspade bench-cpu: %s\n",
                   args.ok() ? "--model DIR is required" : std::string(args.status().message()).c_str());
    }
    std::fprintf(help ? stdout : stderr, "%s", Args::Usage("bench-cpu", synopsis, BenchFlags()).c_str());
    return help ? 0 : 2;
  }
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "asyncspade bench-cpu: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  auto prompt_len = args->GetInt("prompt-len");
  auto decode_tokens = args->GetInt("decode-tokens");
  if (!prompt_len.ok()) return fail(prompt_len.status());
  if (!decode_tokens.ok()) return fail(decode_tokens.status());
  const int p = static_cast<int>(prompt_len->value_or(128));
  const int d = static_cast<int>(decode_tokens->value_or(64));
  if (p < 1 || d < 2) return fail(absl::InvalidArgumentError("--prompt-len must be ≥ 1 and --decode-tokens ≥ 2"));
  std::vector<int> batch_sizes;
  for (absl::string_view part : absl::StrSplit(args->GetOr("batch-sizes", "1,8"), ',', absl::SkipEmpty())) {
    int b;
    if (!absl::SimpleAtoi(part, &b) || b < 1) {
      return fail(absl::InvalidArgumentError(absl::StrCat("--batch-sizes: '", part, "' is not a positive integer")));
    }
    batch_sizes.push_back(b);
  }

  const std::string model_dir = *args->Get("model");
  auto loaded = CpuModelWeights::Load(model_dir);
  if (!loaded.ok()) return fail(Annotate(loaded.status(), absl::StrCat("loading model '", model_dir, "'")));
  std::shared_ptr<const CpuModelWeights> weights = std::move(loaded).value();

  std::printf("model %s (%s, %.1fM parameters, fp32 CPU, %s)\n", model_dir.c_str(),
              weights->config().architecture.c_str(), weights->num_parameters() / 1e6, BlasDescription().c_str());
  std::printf("%6s %10s %10s %16s %15s %15s %8s\n", "batch", "prompt", "new", "prefill tok/s", "decode tok/s",
              "ms/decode step", "CPU%");
  nlohmann::json json_results = nlohmann::json::array();
  for (int batch : batch_sizes) {
    auto r = RunOne(weights, batch, p, d);
    if (!r.ok()) return fail(r.status());
    std::printf("%6d %10d %10d %16.1f %15.1f %15.2f %8.0f\n", batch, p, d, r->prefill_tokens_per_second(),
                r->decode_tokens_per_second(), r->ms_per_decode_step(), r->cpu_percent());
    std::fflush(stdout);
    json_results.push_back({{"batch", batch},
                            {"prompt_len", p},
                            {"decode_tokens", d},
                            {"prefill_tokens_per_second", r->prefill_tokens_per_second()},
                            {"decode_tokens_per_second", r->decode_tokens_per_second()},
                            {"ms_per_decode_step", r->ms_per_decode_step()},
                            {"cpu_percent", r->cpu_percent()}});
  }
  if (auto path = args->Get("json")) {
    std::ofstream out(*path);
    out << nlohmann::json{{"model", model_dir}, {"device", "cpu"}, {"results", json_results}}.dump(2) << "\n";
    if (!out) return fail(absl::UnavailableError(absl::StrCat("cannot write ", *path)));
  }
  return 0;
}

// Registered by hand: the command name has a dash.
const CommandRegistrar kBenchCpuRegistrar("bench-cpu", "CPU engine prefill/decode throughput table",
                                          BenchCpuCommand);

}  // namespace
}  // namespace asyncspade::cli
