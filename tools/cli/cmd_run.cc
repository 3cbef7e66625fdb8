// `asyncspade run`: offline, single-process generation on the CPU reference engine. Streams the
// generated text to stdout as it is produced.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/npy.h"
#include "common/status.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "services/decode_worker/engine/generation_engine.h"
#include "services/decode_worker/model/cpu_model_runner.h"
#include "tools/cli/args.h"
#include "tools/cli/commands.h"

namespace asyncspade::cli {
namespace {

constexpr int kDefaultMaxTokens = 256;
constexpr int kPageSize = 16;

const std::vector<FlagSpec>& RunFlags() {
  static const std::vector<FlagSpec> flags = {
      {"model", true, "model directory (HF layout: config.json, *.safetensors, tokenizer.json)"},
      {"prompt", true, "prompt text; the tokenizer adds its special tokens (e.g. BOS)"},
      {"prompt-ids", true, "prompt as comma-separated token ids, e.g. 1,403,407"},
      {"chat", true, "one user message, rendered with the model's chat template"},
      {"max-tokens", true, "new tokens to generate (default 256, capped by the context length); 0 only scores"},
      {"temperature", true, "sampling temperature (default 0: greedy, reproducible)"},
      {"top-p", true, "nucleus sampling probability mass in (0, 1] (default 1: off)"},
      {"top-k", true, "keep the k most likely tokens (default 0: off)"},
      {"seed", true, "sampling seed (default 0)"},
      {"print-ids", false, "print the generated token ids, space-separated, on the last line"},
      {"dump-logits", true, "write the logits of every prompt position as float32 .npy [prompt_len, vocab]"},
      {"help", false, "show this help"},
  };
  return flags;
}

constexpr char kSynopsis[] =
    "--model DIR (--prompt TEXT | --prompt-ids 1,2,3 | --chat TEXT) [--max-tokens N] [--temperature T] "
    "[--top-p P] [--top-k K] [--seed S] [--print-ids] [--dump-logits FILE]";

struct RunOptions {
  std::string model_dir;
  std::optional<std::string> prompt, prompt_ids, chat;
  std::optional<int64_t> max_tokens;
  kernels::SamplingParams sampling;
  bool print_ids = false;
  std::optional<std::string> dump_logits;
};

absl::StatusOr<RunOptions> ParseRunOptions(const Args& args) {
  RunOptions o;
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", args.positional()[0],
                                                   "' (quote the prompt: --prompt \"...\")"));
  }
  if (!args.Has("model")) return absl::InvalidArgumentError("--model DIR is required");
  o.model_dir = *args.Get("model");
  o.prompt = args.Get("prompt");
  o.prompt_ids = args.Get("prompt-ids");
  o.chat = args.Get("chat");
  if (int(o.prompt.has_value()) + int(o.prompt_ids.has_value()) + int(o.chat.has_value()) != 1) {
    return absl::InvalidArgumentError("give exactly one of --prompt, --prompt-ids or --chat");
  }
  ASSIGN_OR_RETURN(o.max_tokens, args.GetInt("max-tokens"));
  if (o.max_tokens && *o.max_tokens < 0) return absl::InvalidArgumentError("--max-tokens must be ≥ 0");
  ASSIGN_OR_RETURN(auto temperature, args.GetDouble("temperature"));
  ASSIGN_OR_RETURN(auto top_p, args.GetDouble("top-p"));
  ASSIGN_OR_RETURN(auto top_k, args.GetInt("top-k"));
  ASSIGN_OR_RETURN(auto seed, args.GetInt("seed"));
  o.sampling.temperature = static_cast<float>(temperature.value_or(0.0));
  o.sampling.top_p = static_cast<float>(top_p.value_or(1.0));
  o.sampling.top_k = static_cast<int>(top_k.value_or(0));
  o.sampling.seed = static_cast<uint64_t>(seed.value_or(0));
  if (auto s = ValidateSamplingParams(o.sampling); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("bad sampling flags: ", s.message()));
  }
  o.print_ids = args.Has("print-ids");
  o.dump_logits = args.Get("dump-logits");
  return o;
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const RunOptions& o, const Tokenizer* tokenizer) {
  if (o.prompt_ids) {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdList(*o.prompt_ids));
    if (ids.empty()) return absl::InvalidArgumentError("--prompt-ids is empty");
    return ids;
  }
  if (tokenizer == nullptr) return absl::FailedPreconditionError("the model has no usable tokenizer");
  if (o.prompt) return tokenizer->Encode(*o.prompt, /*add_special_tokens=*/true);
  auto chat_template = ChatTemplate::FromModelDir(o.model_dir);
  if (!chat_template.ok()) {
    return Annotate(chat_template.status(), "--chat needs the model's chat template (use --prompt for plain text)");
  }
  const std::string rendered =
      chat_template->Render({ChatMessage{"user", *o.chat}}, /*add_generation_prompt=*/true, /*enable_thinking=*/true);
  // The template writes the special tokens itself (as HF apply_chat_template does).
  return tokenizer->Encode(rendered, /*add_special_tokens=*/false);
}

// Returns the process exit code; prints every error itself.
int Run(const RunOptions& o) {
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "asyncspade run: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  std::error_code ec;
  if (!std::filesystem::is_directory(o.model_dir, ec)) {
    return fail(absl::NotFoundError(absl::StrCat("model directory '", o.model_dir, "' does not exist")));
  }
  auto weights = CpuModelWeights::Load(o.model_dir);
  if (!weights.ok()) return fail(Annotate(weights.status(), absl::StrCat("loading model '", o.model_dir, "'")));
  const ModelConfig config = (*weights)->config();

  std::unique_ptr<Tokenizer> tokenizer;
  auto loaded_tokenizer = Tokenizer::FromModelDir(o.model_dir);
  if (loaded_tokenizer.ok()) {
    tokenizer = std::move(loaded_tokenizer).value();
  } else if (!o.prompt_ids) {
    return fail(Annotate(loaded_tokenizer.status(), "loading the tokenizer"));
  } else {
    std::fprintf(stderr, "asyncspade run: no tokenizer (%s); printing ids only\n",
                 std::string(loaded_tokenizer.status().message()).c_str());
  }

  auto prompt = PromptIds(o, tokenizer.get());
  if (!prompt.ok()) return fail(prompt.status());
  const int prompt_len = static_cast<int>(prompt->size());
  const int max_len = config.max_position_embeddings;
  int max_tokens = o.max_tokens ? static_cast<int>(*o.max_tokens) : kDefaultMaxTokens;
  if (max_len > 0 && prompt_len >= max_len && max_tokens > 0) {
    return fail(absl::InvalidArgumentError(absl::StrCat("the prompt has ", prompt_len,
                                                        " tokens; the model's context is ", max_len, " tokens")));
  }
  if (!o.max_tokens && max_len > 0) max_tokens = std::min(max_tokens, max_len - prompt_len);

  CpuModelRunnerOptions runner_options;
  runner_options.page_size = kPageSize;
  runner_options.num_kv_blocks = (prompt_len + max_tokens + kPageSize - 1) / kPageSize + 1;
  auto runner = CpuModelRunner::Create(std::shared_ptr<const CpuModelWeights>(std::move(weights).value()),
                                       runner_options);
  if (!runner.ok()) return fail(runner.status());
  GenerationEngineOptions engine_options;
  engine_options.max_batch_size = 1;
  engine_options.max_batch_tokens = 1024;
  auto engine = GenerationEngine::Create(std::move(runner).value(), engine_options, tokenizer.get());
  if (!engine.ok()) return fail(engine.status());

  GenerationRequest request;
  request.prompt_ids = *prompt;
  request.max_tokens = max_tokens;
  request.sampling = o.sampling;
  request.return_prompt_logits = o.dump_logits.has_value();
  if (auto s = (*engine)->Submit(0, std::move(request)); !s.ok()) return fail(s);

  std::vector<int32_t> generated;
  std::vector<float> prompt_logits;
  std::string last_text;
  FinishReason reason = FinishReason::kNone;
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  Clock::time_point first_token;
  while ((*engine)->HasWork()) {
    auto events = (*engine)->Step();
    if (!events.ok()) return fail(events.status());
    for (GenerationEvent& e : *events) {
      if (!e.prompt_logits.empty()) prompt_logits = std::move(e.prompt_logits);
      if (e.token_id) {
        if (generated.empty()) first_token = Clock::now();
        generated.push_back(*e.token_id);
      }
      if (!e.text.empty()) {
        std::fwrite(e.text.data(), 1, e.text.size(), stdout);
        std::fflush(stdout);
        last_text = e.text;
      }
      if (e.finished) reason = e.finish_reason;
    }
  }
  const auto end = Clock::now();
  if (!last_text.empty() && last_text.back() != '\n') std::fputc('\n', stdout);
  if (o.print_ids) std::printf("%s\n", absl::StrJoin(generated, " ").c_str());
  std::fflush(stdout);

  if (o.dump_logits) {
    const absl::Status s = WriteNpy(*o.dump_logits, prompt_logits, {prompt_len, config.vocab_size});
    if (!s.ok()) return fail(Annotate(s, absl::StrCat("writing --dump-logits ", *o.dump_logits)));
  }
  const double total_s = std::chrono::duration<double>(end - start).count();
  if (!generated.empty()) {
    const double prefill_s = std::chrono::duration<double>(first_token - start).count();
    const double decode_s = total_s - prefill_s;
    std::fprintf(stderr, "[prompt %d tokens, %.1f tok/s prefill; generated %zu tokens, %.1f tok/s decode; finish: %s]\n",
                 prompt_len, prompt_len / std::max(prefill_s, 1e-9), generated.size(),
                 generated.size() > 1 ? (generated.size() - 1) / std::max(decode_s, 1e-9) : 0.0,
                 std::string(FinishReasonName(reason)).c_str());
  } else {
    std::fprintf(stderr, "[prompt %d tokens scored in %.3f s]\n", prompt_len, total_s);
  }
  return 0;
}

int RunCommand(int argc, char** argv) {
  int exit_code = 0;
  std::optional<Args> args = ParseCommandArgs(argc, argv, "run", kSynopsis, RunFlags(), &exit_code);
  if (!args) return exit_code;
  auto options = ParseRunOptions(*args);
  if (!options.ok()) {
    std::fprintf(stderr, "asyncspade run: %s\n(asyncspade run --help lists the flags)\n",
                 std::string(options.status().message()).c_str());
    return 2;
  }
  return Run(*options);
}

}  // namespace

ASYNCSPADE_REGISTER_COMMAND(run, "offline single-process generation (CPU reference engine)", RunCommand);

}  // namespace asyncspade::cli
