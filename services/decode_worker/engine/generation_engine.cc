#include "services/decode_worker/engine/generation_engine.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "glog/logging.h"

namespace asyncspade {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kStopString: return "stop_string";
    case FinishReason::kAbort: return "abort";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<GenerationEngine>> GenerationEngine::Create(
    std::unique_ptr<ModelRunner> runner, const GenerationEngineOptions& options, const Tokenizer* tokenizer) {
  if (runner == nullptr) return absl::InvalidArgumentError("GenerationEngine needs a model runner");
  if (options.max_batch_size <= 0 || options.max_batch_tokens <= 0 || options.decode_reserve_tokens < 0 ||
      options.max_sequence_length < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "engine options must be positive: max_batch_size=", options.max_batch_size,
        " max_batch_tokens=", options.max_batch_tokens, " decode_reserve_tokens=", options.decode_reserve_tokens,
        " max_sequence_length=", options.max_sequence_length));
  }
  return std::unique_ptr<GenerationEngine>(new GenerationEngine(std::move(runner), options, tokenizer));
}

GenerationEngine::GenerationEngine(std::unique_ptr<ModelRunner> runner, const GenerationEngineOptions& options,
                                   const Tokenizer* tokenizer)
    : runner_(std::move(runner)),
      options_(options),
      tokenizer_(tokenizer),
      kv_cache_(runner_->kv_layout().num_blocks, runner_->kv_layout().page_size),
      sampler_(runner_->config().vocab_size) {
  const ModelConfig& config = runner_->config();
  max_sequence_length_ = options.max_sequence_length > 0 ? options.max_sequence_length
                                                         : config.max_position_embeddings;
  if (max_sequence_length_ <= 0) max_sequence_length_ = kv_cache_.num_blocks() * kv_cache_.page_size();
  for (int id : config.eos_token_ids) model_eos_ids_.insert(id);
}

absl::Status GenerationEngine::Submit(int64_t request_id, GenerationRequest request) {
  const int vocab = runner_->config().vocab_size;
  if (active_ids_.contains(request_id)) {
    return absl::AlreadyExistsError(absl::StrCat("request id ", request_id, " is already in use"));
  }
  if (request.prompt_ids.empty()) {
    return absl::InvalidArgumentError("the prompt is empty: send at least one token");
  }
  for (size_t i = 0; i < request.prompt_ids.size(); ++i) {
    const int32_t id = request.prompt_ids[i];
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, " has id ", id,
                                                     ", outside the model's vocabulary [0, ", vocab, ")"));
    }
  }
  if (request.max_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be ≥ 0, got ", request.max_tokens));
  }
  const int64_t total = static_cast<int64_t>(request.prompt_ids.size()) + request.max_tokens;
  if (total > max_sequence_length_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", request.prompt_ids.size(), " tokens) + max_tokens (", request.max_tokens, ") = ", total,
        " exceeds the maximum sequence length ", max_sequence_length_, "; shorten the prompt or lower max_tokens"));
  }
  if (kv_cache_.BlocksForTokens(total) > kv_cache_.num_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt + max_tokens = ", total, " tokens needs ", kv_cache_.BlocksForTokens(total),
        " KV blocks but the whole cache has ", kv_cache_.num_blocks(), " (", kv_cache_.page_size(),
        " tokens each); lower max_tokens or start the engine with more KV blocks"));
  }
  RETURN_IF_ERROR(ValidateSamplingParams(request.sampling));
  for (const std::string& stop : request.stop_strings) {
    if (stop.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
  }
  if (!request.stop_strings.empty() && tokenizer_ == nullptr) {
    return absl::InvalidArgumentError("stop strings need the engine to be created with a tokenizer");
  }
  absl::StatusOr<SparsePolicyConfig> sparse =
      ApplySparsePolicyOverride(request.sparse.value_or(options_.sparse_default), request.sparse_override);
  if (!sparse.ok()) return Annotate(sparse.status(), "sparse attention settings");
  if (sparse->policy == SparsePolicy::kQuest && sparse->quest_page_size != kv_cache_.page_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sparse attention settings: quest_page_size ", sparse->quest_page_size,
        " differs from the KV cache page size ", kv_cache_.page_size(),
        "; Quest pages are KV-cache pages, so set sparse.quest_page_size to the page size"));
  }

  auto seq = std::make_unique<Sequence>();
  seq->id = request_id;
  seq->tokens = request.prompt_ids;
  seq->prompt_len = static_cast<int>(request.prompt_ids.size());
  if (tokenizer_ != nullptr) {
    seq->detokenizer = std::make_unique<IncrementalDetokenizer>(*tokenizer_, /*skip_special_tokens=*/true);
    // Prime with the end of the prompt so that the first generated token is decoded in context
    // (e.g. keeps its leading space under SentencePiece decoders); the prompt text is not emitted.
    const size_t context = std::min<size_t>(request.prompt_ids.size(), 4);
    for (size_t i = request.prompt_ids.size() - context; i < request.prompt_ids.size(); ++i) {
      seq->detokenizer->Push(request.prompt_ids[i]);
    }
    seq->stop_matcher = std::make_unique<StopStringMatcher>(request.stop_strings);
  }
  seq->sparse = std::move(sparse).value();
  seq->request = std::move(request);
  active_ids_.insert(request_id);
  waiting_.push_back(std::move(seq));
  return absl::OkStatus();
}

absl::Status GenerationEngine::Abort(int64_t request_id) {
  auto finish = [&](std::unique_ptr<Sequence>& seq) {
    ReleaseSequence(seq.get());
    GenerationEvent event;
    event.request_id = request_id;
    event.finished = true;
    event.finish_reason = FinishReason::kAbort;
    event.sparse_stats = seq->released_sparse_stats;
    pending_events_.push_back(std::move(event));
    active_ids_.erase(request_id);
  };
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if ((*it)->id == request_id) {
      finish(*it);
      waiting_.erase(it);
      return absl::OkStatus();
    }
  }
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if ((*it)->id == request_id) {
      finish(*it);
      running_.erase(it);
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(absl::StrCat("no waiting or running request with id ", request_id));
}

void GenerationEngine::ReleaseSequence(Sequence* seq) {
  seq->released_sparse_stats += runner_->SequenceSparseCounters(seq->id);
  kv_cache_.Free(seq->id);
  runner_->ReleaseSequence(seq->id);
}

void GenerationEngine::Admit() {
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_batch_size) {
    Sequence* seq = waiting_.front().get();
    const int64_t final_length = int64_t{seq->prompt_len} + seq->request.max_tokens;
    const int64_t reserve =
        std::min<int64_t>(static_cast<int64_t>(seq->tokens.size()) + options_.decode_reserve_tokens, final_length);
    // FIFO: the head of the queue waits for room rather than being overtaken.
    if (!kv_cache_.CanReserve(seq->id, reserve)) break;
    {
      const absl::Status reserved = kv_cache_.Reserve(seq->id, reserve);
      CHECK(reserved.ok()) << reserved;
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

void GenerationEngine::PreemptLast() {
  std::unique_ptr<Sequence> victim = std::move(running_.back());
  running_.pop_back();
  ReleaseSequence(victim.get());
  victim->num_computed = 0;
  if (!victim->prompt_logits_sent) victim->prompt_logits.clear();
  ++num_preemptions_;
  waiting_.push_front(std::move(victim));
}

std::vector<GenerationEngine::Scheduled> GenerationEngine::Schedule() {
  std::vector<Scheduled> scheduled;
  int budget = options_.max_batch_tokens;
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence* seq = running_[i].get();
    const int remaining = static_cast<int>(seq->tokens.size()) - seq->num_computed;
    const int chunk = std::min(remaining, budget);
    const int64_t new_length = int64_t{seq->num_computed} + chunk;
    // Make room by preempting the newest sequences; a sequence alone always fits (Submit checked).
    bool preempted_self = false;
    while (!kv_cache_.CanReserve(seq->id, new_length)) {
      preempted_self = running_.back().get() == seq;
      PreemptLast();
      if (preempted_self) break;
    }
    if (preempted_self) break;
    {
      const absl::Status reserved = kv_cache_.Reserve(seq->id, new_length);
      CHECK(reserved.ok()) << reserved;
    }
    budget -= chunk;
    const bool reaches_end = new_length == static_cast<int64_t>(seq->tokens.size());
    const bool collect_prompt_logits = seq->request.return_prompt_logits && !seq->prompt_logits_sent;
    LogitsWanted logits = reaches_end ? LogitsWanted::kLast : LogitsWanted::kNone;
    if (collect_prompt_logits) logits = LogitsWanted::kAll;
    scheduled.push_back({seq, chunk, logits, reaches_end});
  }
  return scheduled;
}

void GenerationEngine::StreamText(Sequence* seq, const std::string& piece, bool final, GenerationEvent* event,
                                  bool* stopped) {
  if (seq->stop_matcher == nullptr) return;
  StopStringMatcher::Result r = seq->stop_matcher->Push(piece, final);
  event->text += r.visible;
  *stopped = r.stopped;
}

bool GenerationEngine::ApplyToken(Sequence* seq, int32_t token, GenerationEvent* event) {
  const GenerationRequest& request = seq->request;
  event->token_id = token;
  seq->tokens.push_back(token);
  ++seq->num_generated;

  const bool is_eos = !request.ignore_eos &&
                      (model_eos_ids_.contains(token) ||
                       std::find(request.eos_token_ids.begin(), request.eos_token_ids.end(), token) !=
                           request.eos_token_ids.end());
  const bool is_stop_token =
      std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), token) != request.stop_token_ids.end();
  const bool at_length = seq->num_generated >= request.max_tokens;
  const bool final = is_eos || is_stop_token || at_length;

  bool stopped_by_string = false;
  if (seq->detokenizer != nullptr) {
    // The text of an EOS/stop token is not part of the answer.
    std::string piece = (is_eos || is_stop_token) ? std::string() : seq->detokenizer->Push(token);
    if (final) piece += seq->detokenizer->Flush();
    StreamText(seq, piece, final, event, &stopped_by_string);
  }
  if (stopped_by_string) {
    event->finish_reason = FinishReason::kStopString;
  } else if (is_eos || is_stop_token) {
    event->finish_reason = FinishReason::kStop;
  } else if (at_length) {
    event->finish_reason = FinishReason::kLength;
  }
  event->finished = event->finish_reason != FinishReason::kNone;
  return event->finished;
}

absl::StatusOr<std::vector<GenerationEvent>> GenerationEngine::Step() {
  std::vector<GenerationEvent> events = std::move(pending_events_);
  pending_events_.clear();
  Admit();
  std::vector<Scheduled> scheduled = Schedule();
  last_step_num_tokens_ = 0;
  if (scheduled.empty()) return events;

  // A runner that samples draws the next tokens itself: their logits rows stay where they are
  // unless the request also wants them (prompt logits).
  const bool runner_samples = options_.sample_on_runner && runner_->samples_tokens();
  ForwardBatch batch;
  batch.sequences.reserve(scheduled.size());
  for (const Scheduled& s : scheduled) {
    ForwardSequence fs;
    fs.sequence_id = s.seq->id;
    fs.tokens = absl::MakeConstSpan(s.seq->tokens).subspan(s.seq->num_computed, s.num_tokens);
    fs.start_position = s.seq->num_computed;
    fs.block_table = kv_cache_.BlockTable(s.seq->id);
    fs.logits = s.logits;
    fs.sparse = &s.seq->sparse;
    if (runner_samples && s.reaches_end && s.seq->request.max_tokens > 0) {
      fs.sampling = &s.seq->request.sampling;
      fs.rng_step = static_cast<uint64_t>(s.seq->num_generated);
      if (fs.logits == LogitsWanted::kLast) fs.logits = LogitsWanted::kNone;
    }
    batch.sequences.push_back(fs);
    last_step_num_tokens_ += s.num_tokens;
  }
  batch.step = step_counter_++;
  ForwardOutput& output = output_;
  RETURN_IF_ERROR(Annotate(runner_->Forward(batch, &output), "model forward"));

  // Sequences whose chunk reached the end of their known tokens get a next token (or, when only
  // scoring, finish): drawn by the runner when it was asked to, else sampled here from the rows.
  std::vector<size_t> to_sample;
  std::vector<int32_t> sampled;
  std::vector<size_t> host_sampled;  // indices into to_sample / sampled
  std::vector<const float*> rows;
  std::vector<SamplingParams> params;
  std::vector<uint64_t> steps;
  const int vocab = output.vocab_size;
  for (size_t b = 0; b < scheduled.size(); ++b) {
    Sequence* seq = scheduled[b].seq;
    if (scheduled[b].logits == LogitsWanted::kAll && !seq->prompt_logits_sent) {
      const int prompt_rows = std::min(output.num_rows(static_cast<int>(b)), seq->prompt_len - seq->num_computed);
      const float* first = output.row(static_cast<int>(b), 0);
      seq->prompt_logits.insert(seq->prompt_logits.end(), first, first + int64_t{prompt_rows} * vocab);
    }
    seq->num_computed += scheduled[b].num_tokens;
    if (seq->num_computed == static_cast<int>(seq->tokens.size())) {
      to_sample.push_back(b);
      if (batch.sequences[b].sampling != nullptr) {
        const int32_t token =
            b < output.sampled_tokens.size() ? output.sampled_tokens[b] : int32_t{-1};
        if (token < 0 || token >= vocab) {
          return absl::InternalError(absl::StrCat("the model runner was asked to sample sequence ", seq->id,
                                                  " but returned token ", token, " (vocabulary size ", vocab,
                                                  ", ", output.sampled_tokens.size(), " tokens for ",
                                                  scheduled.size(), " sequences)"));
        }
        sampled.push_back(token);
      } else {
        host_sampled.push_back(sampled.size());
        sampled.push_back(-1);
        rows.push_back(output.last_row(static_cast<int>(b)));
        params.push_back(seq->request.sampling);
        steps.push_back(static_cast<uint64_t>(seq->num_generated));
      }
    }
  }
  if (!host_sampled.empty()) {
    std::vector<int32_t> drawn(host_sampled.size());
    sampler_.Sample(rows, params, steps, absl::MakeSpan(drawn));
    for (size_t i = 0; i < host_sampled.size(); ++i) sampled[host_sampled[i]] = drawn[i];
  }

  absl::flat_hash_map<int64_t, size_t> finished;  // sequence id → its event
  for (size_t i = 0; i < to_sample.size(); ++i) {
    Sequence* seq = scheduled[to_sample[i]].seq;
    GenerationEvent event;
    event.request_id = seq->id;
    if (seq->request.return_prompt_logits && !seq->prompt_logits_sent) {
      event.prompt_logits = std::move(seq->prompt_logits);
      seq->prompt_logits = {};
      seq->prompt_logits_sent = true;
    }
    if (seq->request.max_tokens == 0) {
      event.finished = true;
      event.finish_reason = FinishReason::kLength;
    } else {
      ApplyToken(seq, sampled[i], &event);
    }
    if (event.finished) finished[seq->id] = events.size();
    events.push_back(std::move(event));
  }
  if (!finished.empty()) {
    for (const std::unique_ptr<Sequence>& seq : running_) {
      auto it = finished.find(seq->id);
      if (it == finished.end()) continue;
      ReleaseSequence(seq.get());
      events[it->second].sparse_stats = seq->released_sparse_stats;
      active_ids_.erase(seq->id);
    }
    std::erase_if(running_, [&](const std::unique_ptr<Sequence>& s) { return finished.contains(s->id); });
  }
  return events;
}

}  // namespace asyncspade
