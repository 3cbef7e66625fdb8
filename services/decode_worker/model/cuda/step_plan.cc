#include "services/decode_worker/model/cuda/step_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace asyncspade::cuda_engine {
namespace {

constexpr int kKvClassLinearFrom = 8192;

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace

int BatchBucket(int num_seqs) {
  int bucket = 1;
  while (bucket < num_seqs) bucket *= 2;
  return bucket;
}

int TokenBucket(int num_tokens) {
  if (num_tokens <= 64) return BatchBucket(std::max(num_tokens, 1));
  return CeilDiv(num_tokens, 64) * 64;
}

int KvClass(int max_kv_len, int cap) {
  int c = 256;
  while (c < max_kv_len && c < kKvClassLinearFrom) c *= 2;
  if (c < max_kv_len) c = CeilDiv(max_kv_len, kKvClassLinearFrom) * kKvClassLinearFrom;
  return std::max(std::min(c, cap), max_kv_len);
}

void ResolveGroupLaunch(const SparseGroupKey& key, int kv_class, int page_size, SparseGroupPlan* group) {
  // Clamping keeps the lists the same: with kv_len ≤ kv_class, sinks beyond the class cover the
  // whole context anyway, and a recent window reaching back to the sinks makes the selection
  // irrelevant; in serving (kv_len > sinks + budget + recent) nothing is clamped.
  const int sinks = std::min(key.sinks, kv_class);
  const int recent = std::min(key.recent, kv_class - sinks);
  const int available = kv_class - sinks - recent;
  group->key = key;
  group->sinks = sinks;
  group->recent = recent;
  if (key.policy == SparsePolicy::kQuest) {
    // As the CPU stage: ⌊budget / page⌋ pages (at least one), here also at most the pages that can
    // hold selectable positions in the class (+2 for pages straddling the sinks and the window).
    const int pages = std::max(1, key.budget / page_size);
    group->quest_pages = std::max(1, std::min(pages, CeilDiv(available, page_size) + 2));
    group->num_selected = group->quest_pages * page_size;
  } else {
    group->quest_pages = 0;
    group->num_selected = std::min(key.budget, available);
  }
  group->max_indices = sinks + group->num_selected + recent;
}

StepPlanner::StepPlanner(const StepLimits& limits, const StepAttentionOptions& options)
    : limits_(limits), options_(options) {}

void StepPlanner::Reserve(StepPlan* p) const {
  const StepLimits& lim = limits_;
  const size_t tokens = lim.max_tokens;
  const size_t seqs = lim.max_seqs;
  p->token_ids.reserve(tokens);
  p->positions.reserve(tokens);
  p->slots.reserve(tokens);
  p->q_indptr.reserve(seqs + 1);
  p->kv_lens.reserve(seqs);
  p->kv_lens_dense.reserve(seqs);
  p->last_rows.reserve(seqs);
  p->block_tables.reserve(seqs * CeilDiv(lim.max_kv_len, lim.page_size));
  p->logit_rows.reserve(static_cast<size_t>(CeilDiv(lim.max_tokens, lim.logits_chunk_rows)) * lim.logits_chunk_rows);
  p->logit_row_output.reserve(tokens);
  p->row_offsets.reserve(seqs + 1);
  p->decode_logit_source.reserve(seqs);
  p->sample_row.reserve(seqs);
  p->sample_params.reserve(std::max(tokens, seqs));
  p->sample_steps.reserve(std::max(tokens, seqs));
  p->attention.reserve(seqs);
  p->groups.resize(seqs);
  for (SparseGroupPlan& group : p->groups) {
    group.kv_lens.reserve(seqs);
    group.scatter_rows.reserve(seqs);
  }
}

absl::Status StepPlanner::Build(const ForwardBatch& batch, StepPlan* p) const {
  const StepLimits& lim = limits_;
  const int num_seqs = static_cast<int>(batch.sequences.size());
  p->num_seqs = num_seqs;
  p->num_groups = 0;
  p->row_offsets.assign(1, 0);
  p->attention.clear();
  p->num_output_rows = 0;
  p->num_logit_rows = 0;
  p->num_sampled = 0;
  p->logit_rows.clear();
  p->logit_row_output.clear();
  p->decode_logit_source.clear();
  p->sample_row.clear();
  p->sample_params.clear();
  p->sample_steps.clear();
  if (num_seqs == 0) {
    p->num_tokens = p->tokens_padded = p->seqs_padded = 0;
    return absl::OkStatus();
  }
  if (num_seqs > lim.max_seqs) {
    return absl::InvalidArgumentError(absl::StrCat("the batch has ", num_seqs,
                                                   " sequences but the CUDA runner was sized for at most ",
                                                   lim.max_seqs, " (its max_batch_size)"));
  }
  const int page = lim.page_size;
  int num_tokens = 0;
  int max_q_len = 0;
  int max_kv_len = 0;
  for (const ForwardSequence& s : batch.sequences) {
    const int n = static_cast<int>(s.tokens.size());
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id, " has no new tokens"));
    if (s.start_position < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s.sequence_id, " has negative start position ", s.start_position));
    }
    const int64_t kv_len = int64_t{s.start_position} + n;
    if (kv_len > lim.max_kv_len) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id, " reaches ", kv_len,
                                                     " tokens but the CUDA runner holds at most ", lim.max_kv_len,
                                                     " per sequence (its max_seq_len)"));
    }
    if (static_cast<int64_t>(s.block_table.size()) * page < kv_len) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id, " needs ", kv_len,
                                                     " cache slots but its block table holds ",
                                                     s.block_table.size() * page));
    }
    const int blocks_used = CeilDiv(static_cast<int>(kv_len), page);
    for (int j = 0; j < blocks_used; ++j) {
      const int32_t block = s.block_table[j];
      if (block < 0 || block >= lim.num_kv_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id, " references KV block ", block,
                                                       " outside [0, ", lim.num_kv_blocks, ")"));
      }
    }
    for (int32_t id : s.tokens) {
      if (id < 0 || id >= lim.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", s.sequence_id, " has token id ", id,
                                                       " outside the vocabulary [0, ", lim.vocab_size, ")"));
      }
    }
    num_tokens += n;
    max_q_len = std::max(max_q_len, n);
    max_kv_len = std::max(max_kv_len, static_cast<int>(kv_len));
  }
  if (num_tokens > lim.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("the batch has ", num_tokens,
                                                   " new tokens but the CUDA runner was sized for at most ",
                                                   lim.max_tokens, " per forward (its max batch tokens)"));
  }

  p->decode_only = max_q_len == 1;
  p->num_tokens = num_tokens;
  p->max_q_len = max_q_len;
  p->max_kv_len = max_kv_len;
  p->seqs_padded = p->decode_only ? BatchBucket(num_seqs) : num_seqs;
  p->tokens_padded = p->decode_only ? p->seqs_padded : TokenBucket(num_tokens);
  p->kv_class = KvClass(max_kv_len, lim.max_kv_len);
  p->block_stride = CeilDiv(p->kv_class, page);
  const int seqs = p->seqs_padded;
  const int tokens = p->tokens_padded;

  p->token_ids.assign(tokens, 0);
  p->positions.assign(tokens, 0);
  p->slots.assign(tokens, -1);
  p->q_indptr.assign(seqs + 1, 0);
  p->kv_lens.assign(seqs, 0);
  p->kv_lens_dense.assign(seqs, 0);
  p->last_rows.assign(seqs, -1);
  p->block_tables.assign(static_cast<size_t>(seqs) * p->block_stride, 0);
  p->decode_logit_source.clear();
  p->quest_update = false;

  int row = 0;
  for (int b = 0; b < num_seqs; ++b) {
    const ForwardSequence& s = batch.sequences[b];
    const int n = static_cast<int>(s.tokens.size());
    const int kv_len = s.start_position + n;
    for (int i = 0; i < n; ++i) {
      const int position = s.start_position + i;
      p->token_ids[row + i] = s.tokens[i];
      p->positions[row + i] = position;
      p->slots[row + i] = int64_t{s.block_table[position / page]} * page + position % page;
    }
    std::copy_n(s.block_table.begin(), CeilDiv(kv_len, page),
                p->block_tables.begin() + static_cast<size_t>(b) * p->block_stride);
    row += n;
    p->q_indptr[b + 1] = row;
    p->kv_lens[b] = kv_len;
    p->kv_lens_dense[b] = kv_len;
    p->last_rows[b] = row - 1;
  }
  // Padded sequences of a decode step own one padded token each and no keys.
  for (int b = num_seqs; b < seqs; ++b) p->q_indptr[b + 1] = p->q_indptr[b] + 1;

  // Logits rows: returned ones, then (mixed steps) the last rows of sequences that are only
  // sampled. A returned kLast / kAll range always ends at the sequence's last row, which is then
  // also the row its token is drawn from.
  row = 0;
  p->sample_row.assign(num_seqs, -1);
  for (int b = 0; b < num_seqs; ++b) {
    const ForwardSequence& s = batch.sequences[b];
    const int n = static_cast<int>(s.tokens.size());
    const int rows = s.logits == LogitsWanted::kAll ? n : s.logits == LogitsWanted::kLast ? 1 : 0;
    for (int i = n - rows; i < n; ++i) {
      p->logit_row_output.push_back(static_cast<int32_t>(p->logit_rows.size()));
      p->logit_rows.push_back(row + i);
      if (p->decode_only) p->decode_logit_source.push_back(row + i);
    }
    if (lim.sample_tokens && s.sampling != nullptr && rows > 0) {
      p->sample_row[b] = p->decode_only ? b : static_cast<int32_t>(p->logit_rows.size()) - 1;
    }
    p->row_offsets.push_back(p->row_offsets.back() + rows);
    row += n;
  }
  p->num_output_rows = static_cast<int>(p->logit_rows.size());
  row = 0;
  for (int b = 0; b < num_seqs; ++b) {
    const ForwardSequence& s = batch.sequences[b];
    const int n = static_cast<int>(s.tokens.size());
    if (lim.sample_tokens && s.sampling != nullptr && p->sample_row[b] < 0) {
      p->sample_row[b] = p->decode_only ? b : static_cast<int32_t>(p->logit_rows.size());
      p->logit_row_output.push_back(-1);
      p->logit_rows.push_back(row + n - 1);
    }
    row += n;
  }
  p->num_logit_rows = static_cast<int>(p->logit_rows.size());
  const int chunk = lim.logits_chunk_rows;
  p->logit_rows.resize(static_cast<size_t>(CeilDiv(std::max(p->num_logit_rows, 1), chunk)) * chunk, -1);
  if (lim.sample_tokens) {
    const int sample_rows = p->decode_only ? num_seqs : p->num_logit_rows;
    p->sample_params.assign(sample_rows, kernels::SamplingParams{});  // greedy: cheap, and ignored
    p->sample_steps.assign(sample_rows, 0);
    for (int b = 0; b < num_seqs; ++b) {
      const int r = p->sample_row[b];
      if (r < 0) continue;
      p->sample_params[r] = *batch.sequences[b].sampling;
      p->sample_steps[r] = batch.sequences[b].rng_step;
      ++p->num_sampled;
    }
  }

  // Attention policy of each sequence.
  p->attention.assign(num_seqs, SequenceAttention::kDense);
  if (!options_.per_sequence_policies) return absl::OkStatus();
  for (int b = 0; b < num_seqs; ++b) {
    const ForwardSequence& s = batch.sequences[b];
    const SparsePolicyConfig& config = s.sparse != nullptr ? *s.sparse : options_.default_config;
    if (config.policy == SparsePolicy::kQuest) {
      if (config.quest_page_size != page) {
        return absl::FailedPreconditionError(
            absl::StrCat("sequence ", s.sequence_id, ": quest_page_size ", config.quest_page_size,
                         " differs from the KV cache page size ", page, "; Quest pages are KV-cache pages"));
      }
      if (options_.quest_supported) p->quest_update = true;
    }
    if (s.tokens.size() != 1 || config.policy == SparsePolicy::kDense) continue;
    const int kv_len = p->kv_lens[b];
    const int64_t threshold = options_.dense_below_threshold ? config.SparseFromContext() : 0;
    const bool eligible = kv_len > threshold;
    const bool supported = (config.policy == SparsePolicy::kQuest && options_.quest_supported) ||
                           (config.policy == SparsePolicy::kOracle && options_.oracle_supported);
    if (!supported) {
      // asyncspade needs a selector (the CPU stage's path); unsupported shapes attend densely too.
      if (eligible) p->attention[b] = SequenceAttention::kDenseFallback;
      continue;
    }
    // Page bounds are not probabilities: Quest's softmax-sum is its sum (as in the CPU stage).
    const ScoreAggregation aggregation =
        config.policy == SparsePolicy::kQuest && config.aggregation == ScoreAggregation::kSoftmaxSum
            ? ScoreAggregation::kSum
            : config.aggregation;
    SparseGroupKey key{config.policy, config.budget, config.sinks, config.recent, aggregation};
    int g = 0;
    while (g < p->num_groups && !(p->groups[g].key == key)) ++g;
    if (g == p->num_groups) {
      if (static_cast<int>(p->groups.size()) <= g) p->groups.emplace_back();
      SparseGroupPlan& group = p->groups[g];
      group.key = key;
      group.num_members = 0;
      group.kv_lens.assign(seqs, 0);
      group.scatter_rows.assign(seqs, -1);
      ++p->num_groups;
    }
    if (!eligible) continue;
    SparseGroupPlan& group = p->groups[g];
    group.kv_lens[b] = kv_len;
    group.scatter_rows[b] = p->last_rows[b];
    ++group.num_members;
    p->kv_lens_dense[b] = 0;
    p->attention[b] = SequenceAttention::kSparse;
  }
  // A canonical group order: the decode graph key lists the groups.
  std::sort(p->groups.begin(), p->groups.begin() + p->num_groups,
            [](const SparseGroupPlan& a, const SparseGroupPlan& b) { return a.key < b.key; });
  for (int g = 0; g < p->num_groups; ++g) ResolveGroupLaunch(p->groups[g].key, p->kv_class, page, &p->groups[g]);
  p->pure_sparse = p->decode_only && p->num_groups == 1 && p->groups[0].num_members == num_seqs;
  return absl::OkStatus();
}

}  // namespace asyncspade::cuda_engine
