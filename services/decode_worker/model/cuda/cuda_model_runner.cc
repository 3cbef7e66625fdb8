#include "services/decode_worker/model/cuda/cuda_model_runner.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "glog/logging.h"
#include "kernels/activation.h"
#include "kernels/cuda_status.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/key_scoring.h"
#include "kernels/paged_attention.h"
#include "kernels/paged_kv_append.h"
#include "kernels/quest.h"
#include "kernels/rms_norm.h"
#include "kernels/rope.h"
#include "kernels/sampling.h"
#include "kernels/sparse_attention.h"
#include "kernels/topk.h"
#include "services/decode_worker/model/cuda/cuda_model_weights.h"
#include "services/decode_worker/model/cuda/device_memory.h"
#include "services/decode_worker/model/cuda/logits_gemm.h"
#include "services/decode_worker/model/cuda/runner_kernels.h"
#include "services/decode_worker/model/cuda/step_plan.h"

namespace asyncspade {
namespace {

namespace kc = kernels::cuda;
using cuda_engine::DeviceMemory;
using cuda_engine::OffsetPlanner;
using cuda_engine::PinnedMemory;
using cuda_engine::SparseGroupKey;
using cuda_engine::SparseGroupPlan;
using cuda_engine::StepPlan;
using bf16 = __nv_bfloat16;

// Decode steps with more distinct sparse settings than this run eagerly (their graph keys would
// multiply without bound).
constexpr int kMaxGraphGroups = 2;

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

kernels::GroupAggregation KernelAggregation(ScoreAggregation aggregation) {
  switch (aggregation) {
    case ScoreAggregation::kSum:
      return kernels::GroupAggregation::kSum;
    case ScoreAggregation::kMax:
      return kernels::GroupAggregation::kMax;
    case ScoreAggregation::kSoftmaxSum:
      return kernels::GroupAggregation::kSoftmaxSum;
  }
  return kernels::GroupAggregation::kSum;
}

// Everything that fixes the host-side launch parameters of a decode step.
struct GraphKey {
  int seqs = 0;
  int kv_class = 0;
  bool pure = false;
  int num_groups = 0;
  std::array<SparseGroupKey, kMaxGraphGroups> groups{};
  bool operator<(const GraphKey& o) const {
    return std::tie(seqs, kv_class, pure, num_groups, groups) <
           std::tie(o.seqs, o.kv_class, o.pure, o.num_groups, o.groups);
  }
};

// Offsets of one step's arrays in the staging buffers (pinned host and each rank's device copy);
// a function of the plan's sizes only, so a decode graph's key fixes its device addresses.
struct StagingLayout {
  size_t token_ids = 0, positions = 0, slots = 0, q_indptr = 0, kv_lens = 0, kv_lens_dense = 0;
  size_t block_tables = 0, last_rows = 0, logit_rows = 0;
  std::vector<size_t> group_kv_lens, group_scatter_rows;
  // Last, so that the arrays a decode graph reads keep their offsets whatever is sampled.
  size_t sample_params = 0, sample_steps = 0;
  size_t total = 0;
};

void ComputeStagingLayout(int tokens, int seqs, int block_stride, size_t logit_rows, int num_groups,
                          size_t sample_rows, StagingLayout* l) {
  OffsetPlanner planner;
  l->token_ids = planner.AddArray<int32_t>(tokens);
  l->positions = planner.AddArray<int32_t>(tokens);
  l->slots = planner.AddArray<int64_t>(tokens);
  l->q_indptr = planner.AddArray<int32_t>(seqs + 1);
  l->kv_lens = planner.AddArray<int32_t>(seqs);
  l->kv_lens_dense = planner.AddArray<int32_t>(seqs);
  l->block_tables = planner.AddArray<int32_t>(static_cast<size_t>(seqs) * block_stride);
  l->last_rows = planner.AddArray<int32_t>(seqs);
  l->logit_rows = planner.AddArray<int32_t>(logit_rows);
  l->group_kv_lens.resize(num_groups);
  l->group_scatter_rows.resize(num_groups);
  for (int g = 0; g < num_groups; ++g) {
    l->group_kv_lens[g] = planner.AddArray<int32_t>(seqs);
    l->group_scatter_rows[g] = planner.AddArray<int32_t>(seqs);
  }
  l->sample_params = planner.AddArray<kernels::SamplingParams>(sample_rows);
  l->sample_steps = planner.AddArray<uint64_t>(sample_rows);
  l->total = planner.total();
}

template <typename T>
void CopyTo(char* base, size_t offset, const std::vector<T>& values) {
  if (!values.empty()) std::memcpy(base + offset, values.data(), values.size() * sizeof(T));
}

// Stage profiling: events recorded at stage boundaries; the time between two marks belongs to the
// stage of the first.
enum class Stage : int {
  kRest = 0,
  kEstimate,
  kTopK,
  kAttention,
  kGemm,
  kNorm,
  kPrep,
  kActivation,
  kAllReduce,
  kHead,
  kSampling,
  kCount
};

class StageProfiler {
 public:
  absl::Status Init(int capacity) {
    events_.resize(capacity, nullptr);
    stages_.resize(capacity, Stage::kRest);
    for (cudaEvent_t& e : events_) RETURN_IF_CUDA_ERROR(cudaEventCreate(&e));
    return absl::OkStatus();
  }
  void Destroy() {
    for (cudaEvent_t e : events_) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    events_.clear();
  }
  void Begin(cudaStream_t stream) {
    stream_ = stream;
    used_ = 0;
    active_ = true;
    Mark(Stage::kRest);
  }
  // From now on, time goes to `stage`.
  void Mark(Stage stage) {
    if (!active_ || used_ >= static_cast<int>(events_.size())) return;
    if (cudaEventRecord(events_[used_], stream_) != cudaSuccess) return;
    stages_[used_++] = stage;
  }
  // Records the end of the last stage (the step's device work is all enqueued).
  void End() {
    Mark(Stage::kRest);
    active_ = false;
  }
  // After End(): waits for the last event and sums the stages.
  CudaStageTimes Finish() {
    if (used_ > 0) cudaEventSynchronize(events_[used_ - 1]);
    double totals[static_cast<int>(Stage::kCount)] = {};
    double total = 0.0;
    for (int i = 0; i + 1 < used_; ++i) {
      float ms = 0.0f;
      if (cudaEventElapsedTime(&ms, events_[i], events_[i + 1]) != cudaSuccess) continue;
      totals[static_cast<int>(stages_[i])] += ms;
      total += ms;
    }
    CudaStageTimes t;
    t.estimate_ms = totals[static_cast<int>(Stage::kEstimate)];
    t.topk_ms = totals[static_cast<int>(Stage::kTopK)];
    t.attention_ms = totals[static_cast<int>(Stage::kAttention)];
    t.gemm_ms = totals[static_cast<int>(Stage::kGemm)];
    t.norm_ms = totals[static_cast<int>(Stage::kNorm)];
    t.prep_ms = totals[static_cast<int>(Stage::kPrep)];
    t.activation_ms = totals[static_cast<int>(Stage::kActivation)];
    t.allreduce_ms = totals[static_cast<int>(Stage::kAllReduce)];
    t.head_ms = totals[static_cast<int>(Stage::kHead)] + totals[static_cast<int>(Stage::kRest)];
    t.sampling_ms = totals[static_cast<int>(Stage::kSampling)];
    t.total_ms = total;
    return t;
  }
  bool active() const { return active_; }

 private:
  std::vector<cudaEvent_t> events_;
  std::vector<Stage> stages_;
  cudaStream_t stream_ = nullptr;
  int used_ = 0;
  bool active_ = false;
};

// One thread per GPU for tensor parallelism: every step runs the same work on all of them, and a
// rank that fails while the others may be waiting in a collective triggers `on_error` (which
// aborts the communicators) so that nothing hangs.
class RankThreads {
 public:
  RankThreads(int num_ranks, std::function<absl::Status(int)> work) : work_(std::move(work)), results_(num_ranks) {
    for (int r = 0; r < num_ranks; ++r) threads_.emplace_back([this, r] { Loop(r); });
  }
  ~RankThreads() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  absl::Status RunAll(const std::function<void()>& on_error) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (absl::Status& s : results_) s = absl::OkStatus();
    pending_ = static_cast<int>(threads_.size());
    any_error_ = false;
    ++generation_;
    work_cv_.notify_all();
    bool aborted = false;
    while (pending_ > 0) {
      done_cv_.wait(lock, [&] { return pending_ == 0 || (any_error_ && !aborted); });
      if (pending_ > 0 && any_error_ && !aborted) {
        aborted = true;
        lock.unlock();
        on_error();
        lock.lock();
      }
    }
    for (const absl::Status& s : results_) {
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

 private:
  void Loop(int rank) {
    uint64_t seen = 0;
    while (true) {
      std::unique_lock<std::mutex> lock(mutex_);
      work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      lock.unlock();
      absl::Status status = work_(rank);
      lock.lock();
      if (!status.ok()) any_error_ = true;
      results_[rank] = std::move(status);
      --pending_;
      done_cv_.notify_all();
    }
  }

  std::function<absl::Status(int)> work_;
  std::vector<absl::Status> results_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool any_error_ = false;
  bool stop_ = false;
};

// Device pointers of one step's staged arrays on one rank.
struct StagedArrays {
  const int32_t* token_ids = nullptr;
  const int32_t* positions = nullptr;
  const int64_t* slots = nullptr;
  const int32_t* q_indptr = nullptr;
  const int32_t* kv_lens = nullptr;
  const int32_t* kv_lens_dense = nullptr;
  const int32_t* block_tables = nullptr;
  const int32_t* last_rows = nullptr;
  const int32_t* logit_rows = nullptr;
  std::vector<const int32_t*> group_kv_lens, group_scatter_rows;
  const kernels::SamplingParams* sample_params = nullptr;
  const uint64_t* sample_steps = nullptr;
};

}  // namespace

struct CudaModelRunner::WeightsFrom {
  const Checkpoint* checkpoint = nullptr;  // or random:
  uint64_t seed = 0;
};

struct CudaModelRunner::Rank {
  int index = 0;
  int device = 0;
  cudaStream_t stream = nullptr;
  // The communicator; guarded by comm_mutex because a failing step aborts it from another thread.
  std::mutex comm_mutex;
  ncclComm_t comm = nullptr;
  bool comm_aborted = false;
  std::unique_ptr<CudaModelWeights> weights;
  std::unique_ptr<kc::CublasLtGemm> gemm;
  std::unique_ptr<cuda_engine::LogitsGemm> logits_gemm;  // rank 0
  kernels::PagedKvLayout layout;                         // this rank's KV heads
  float* inv_freq = nullptr;

  DeviceMemory buffers;
  bf16 *hidden = nullptr, *qkv = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *attn = nullptr;
  float* residual = nullptr;
  bf16 *q_sub = nullptr, *sparse_out = nullptr, *gate_up = nullptr, *act = nullptr, *head_in = nullptr;
  float* logits = nullptr;
  void* decode_workspace = nullptr;
  size_t decode_workspace_bytes = 0;
  // Sparse-attention scratch.
  float *scores = nullptr, *page_scores = nullptr;
  int32_t *pages = nullptr, *selected = nullptr, *indices = nullptr, *counts = nullptr;
  void* score_workspace = nullptr;
  size_t score_workspace_bytes = 0;
  void* sparse_workspace = nullptr;
  size_t sparse_workspace_bytes = 0;
  void* topk_workspace = nullptr;
  size_t topk_workspace_bytes = 0;
  // On-device sampling (rank 0): drawn tokens per sampled row, the kernel's workspace, and (when
  // the vocabulary is padded) the logits rows compacted to the vocabulary's width.
  int32_t* sampled = nullptr;
  void* sample_workspace = nullptr;
  size_t sample_workspace_bytes = 0;
  float* sample_logits = nullptr;

  DeviceMemory kv_memory;
  std::vector<bf16*> k_cache, v_cache, quest_metadata;
  DeviceMemory quest_workspace;

  DeviceMemory staging;
  StagedArrays staged;

  std::map<std::pair<int, int>, kc::DecodeAttentionPlan> decode_plans;  // (seqs, kv class)
  std::map<GraphKey, cudaGraphExec_t> graphs;
  std::set<GraphKey> seen_keys;
  cudaEvent_t step_start = nullptr, step_end = nullptr;
  StageProfiler profiler;

  ~Rank() {
    cudaSetDevice(device);
    if (stream != nullptr) cudaStreamSynchronize(stream);
    for (auto& [key, exec] : graphs) cudaGraphExecDestroy(exec);
    profiler.Destroy();
    if (step_start != nullptr) cudaEventDestroy(step_start);
    if (step_end != nullptr) cudaEventDestroy(step_end);
    if (comm != nullptr) ncclCommDestroy(comm);
    if (inv_freq != nullptr) cudaFree(inv_freq);
    logits_gemm.reset();
    gemm.reset();
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

struct CudaModelRunner::Impl {
  // Shape of every rank's shard (identical but for rank index).
  CudaRankShape shape;
  int num_layers = 0;
  float eps = 0.0f;
  float scale = 0.0f;
  int max_tokens = 0;    // T
  int max_seqs = 0;      // S
  int logits_chunk = 0;  // C
  int max_kv_len = 0;    // L cap
  int index_capacity = 0;
  bool fast_decode = false;
  bool fast_prefill = false;
  bool quest_supported = false;
  bool oracle_supported = false;
  bool sparse_buffers = false;

  std::unique_ptr<cuda_engine::StepPlanner> planner;
  StepPlan plan;
  StagingLayout layout;      // this step's
  StagingLayout max_layout;  // the largest step's (sizes the staging buffers)
  PinnedMemory host_staging;
  PinnedMemory host_logits;  // [C, vocab] fp32
  PinnedMemory host_tokens;  // drawn tokens, one per sampled row
  int sample_capacity = 0;   // rows of the sampling arrays (padded logits rows of the largest step)
  float* out_logits = nullptr;
  bool use_graphs = false;
  bool profiling = false;
  std::unique_ptr<RankThreads> threads;
};

CudaModelRunner::CudaModelRunner() : impl_(std::make_unique<Impl>()) {}

CudaModelRunner::~CudaModelRunner() {
  impl_->threads.reset();
  ranks_.clear();
}

absl::StatusOr<std::unique_ptr<CudaModelRunner>> CudaModelRunner::CreateFromCheckpoint(
    const std::string& model_dir, const CudaModelRunnerOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(model_dir));
  WeightsFrom weights;
  weights.checkpoint = checkpoint.get();
  return Create(config, weights, options);
}

absl::StatusOr<std::unique_ptr<CudaModelRunner>> CudaModelRunner::CreateWithRandomWeights(
    const ModelConfig& config, uint64_t seed, const CudaModelRunnerOptions& options) {
  WeightsFrom weights;
  weights.seed = seed;
  return Create(config, weights, options);
}

absl::StatusOr<std::unique_ptr<CudaModelRunner>> CudaModelRunner::Create(const ModelConfig& config,
                                                                         const WeightsFrom& weights,
                                                                         const CudaModelRunnerOptions& options) {
  const CudaModelRunnerOptions& o = options;
  if (o.devices.empty()) return absl::InvalidArgumentError("the CUDA runner needs at least one device");
  if (o.page_size <= 0) return absl::InvalidArgumentError(absl::StrCat("page_size ", o.page_size, " must be > 0"));
  if (o.max_batch_size <= 0 || o.max_batch_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_batch_size (", o.max_batch_size, ") and max_batch_tokens (",
                                                   o.max_batch_tokens, ") must be positive"));
  }
  if ((o.num_kv_blocks > 0) == (o.kv_memory_fraction > 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat("size the KV cache with exactly one of num_kv_blocks (",
                                                   o.num_kv_blocks, ") and kv_memory_fraction (", o.kv_memory_fraction,
                                                   ")"));
  }
  if (o.kv_memory_fraction > 1.0) {
    return absl::InvalidArgumentError(absl::StrCat("kv_memory_fraction ", o.kv_memory_fraction, " must be in (0, 1]"));
  }
  if (o.max_seq_len < 0) return absl::InvalidArgumentError("max_seq_len must be >= 0");
  if (o.per_sequence_policies) RETURN_IF_ERROR(o.default_sparse.Validate("default sparse settings: "));
  int device_count = 0;
  RETURN_IF_CUDA_ERROR(cudaGetDeviceCount(&device_count));
  for (size_t i = 0; i < o.devices.size(); ++i) {
    if (o.devices[i] < 0 || o.devices[i] >= device_count) {
      return absl::InvalidArgumentError(
          absl::StrCat("CUDA device ", o.devices[i], " does not exist: ", device_count, " device(s) are visible"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (o.devices[j] == o.devices[i]) {
        return absl::InvalidArgumentError(absl::StrCat("CUDA device ", o.devices[i], " is listed twice"));
      }
    }
  }
  auto runner = std::unique_ptr<CudaModelRunner>(new CudaModelRunner());
  runner->config_ = config;
  runner->options_ = options;
  RETURN_IF_ERROR(runner->Init(weights));
  return runner;
}

absl::Status CudaModelRunner::Init(const WeightsFrom& weights) {
  Impl& I = *impl_;
  const ModelConfig& c = config_;
  const CudaModelRunnerOptions& o = options_;
  const int tp = static_cast<int>(o.devices.size());
  ASSIGN_OR_RETURN(I.shape, CudaRankShape::For(c, tp, 0));
  const CudaRankShape& s = I.shape;
  const int page = o.page_size;
  const int group = s.num_q_heads / s.num_kv_heads;
  const int d = s.head_dim;
  I.num_layers = c.num_layers;
  I.eps = static_cast<float>(c.rms_norm_eps);
  I.scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int max_seq_len = o.max_seq_len > 0 ? o.max_seq_len : c.max_position_embeddings;
  if (max_seq_len <= 0) {
    return absl::InvalidArgumentError("max_seq_len is 0 and the model's config gives no max_position_embeddings");
  }
  I.max_kv_len = CeilDiv(max_seq_len, page) * page;
  I.max_seqs = cuda_engine::BatchBucket(o.max_batch_size);
  I.max_tokens = cuda_engine::TokenBucket(std::max(o.max_batch_tokens, I.max_seqs));
  I.logits_chunk = std::max(I.max_seqs, 64);
  I.index_capacity = I.max_kv_len + 4 * page;
  I.fast_decode = (d == 64 || d == 128) && group <= 8 && page % 16 == 0;
  I.fast_prefill = d == 64 || d == 128;
  const bool selection_shapes = (d == 8 || d == 64 || d == 128) && group <= 8;
  I.oracle_supported = selection_shapes;
  I.quest_supported = selection_shapes && o.quest_metadata && o.per_sequence_policies;
  I.sparse_buffers = o.per_sequence_policies && (I.oracle_supported || I.quest_supported);
  if (o.per_sequence_policies && !selection_shapes) {
    LOG(WARNING) << "CUDA runner: head_dim " << d << " with " << group
                 << " query heads per KV head is outside what the quest/oracle kernels support (head_dim 8, 64 "
                    "or 128, at most 8 per group); such sequences attend densely (counted as dense fallbacks)";
  }
  kv_layout_ = kernels::PagedKvLayout{0, c.num_kv_heads, page, d};
  // The largest step's staged arrays (every size at its capacity). Sampling arrays hold a row per
  // computed logits row of a mixed step, or per sequence of a decode step (fewer: C ≥ S).
  const size_t max_logit_rows = static_cast<size_t>(CeilDiv(I.max_tokens, I.logits_chunk)) * I.logits_chunk;
  I.sample_capacity = o.device_sampling ? static_cast<int>(max_logit_rows) : 0;
  ComputeStagingLayout(I.max_tokens, I.max_seqs, CeilDiv(I.max_kv_len, page), max_logit_rows, I.max_seqs,
                       I.sample_capacity, &I.max_layout);

  ranks_.resize(tp);
  for (int r = 0; r < tp; ++r) {
    ranks_[r] = std::make_unique<Rank>();
    ranks_[r]->index = r;
    ranks_[r]->device = o.devices[r];
    RETURN_IF_ERROR(Annotate(InitRank(*ranks_[r], weights), absl::StrCat("CUDA device ", o.devices[r])));
  }
  if (tp > 1) {
    // NVLink multicast (NVLS) stays off on the shared machines; the deployment's environment says so
    // too, this only covers a process started without it.
    setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
    std::vector<ncclComm_t> comms(tp, nullptr);
    std::vector<int> devices(o.devices.begin(), o.devices.end());
    RETURN_IF_NCCL_ERROR(ncclCommInitAll(comms.data(), tp, devices.data()));
    for (int r = 0; r < tp; ++r) ranks_[r]->comm = comms[r];
  }
  RETURN_IF_ERROR(SizeAndAllocateKvCache());

  // Host side: the planner, pinned staging for the step arrays and the logits rows.
  cuda_engine::StepLimits limits;
  limits.max_tokens = I.max_tokens;
  limits.max_seqs = I.max_seqs;
  limits.max_kv_len = I.max_kv_len;
  limits.page_size = page;
  limits.num_kv_blocks = kv_layout_.num_blocks;
  limits.vocab_size = c.vocab_size;
  limits.num_layers = c.num_layers;
  limits.logits_chunk_rows = I.logits_chunk;
  limits.sample_tokens = o.device_sampling;
  cuda_engine::StepAttentionOptions attention;
  attention.per_sequence_policies = o.per_sequence_policies;
  attention.default_config = o.default_sparse;
  attention.dense_below_threshold = o.dense_below_threshold;
  attention.quest_supported = I.quest_supported;
  attention.oracle_supported = I.oracle_supported;
  I.planner = std::make_unique<cuda_engine::StepPlanner>(limits, attention);
  I.planner->Reserve(&I.plan);
  counters_.reserve(4 * static_cast<size_t>(I.max_seqs));  // per-sequence counters without rehashing
  I.layout.group_kv_lens.reserve(I.max_seqs);
  I.layout.group_scatter_rows.reserve(I.max_seqs);
  ASSIGN_OR_RETURN(I.host_staging, PinnedMemory::Allocate(I.max_layout.total, "the step staging"));
  ASSIGN_OR_RETURN(I.host_logits,
                   PinnedMemory::Allocate(size_t(I.logits_chunk) * c.vocab_size * sizeof(float), "the logits staging"));
  if (o.device_sampling) {
    ASSIGN_OR_RETURN(I.host_tokens,
                     PinnedMemory::Allocate(size_t(I.sample_capacity) * sizeof(int32_t), "the sampled tokens"));
  }
  if (tp > 1) {
    I.threads = std::make_unique<RankThreads>(tp, [this](int r) -> absl::Status {
      // The current device is per thread; set it on every step (cheap) rather than relying on the
      // thread's first call.
      RETURN_IF_CUDA_ERROR(cudaSetDevice(ranks_[r]->device));
      return RunRankStep(r);
    });
  }
  LOG(INFO) << "CUDA runner: " << c.architecture << ", " << tp << " GPU(s), " << kv_layout_.num_blocks
            << " KV blocks of " << page << " tokens, max " << I.max_seqs << " sequences / " << I.max_tokens
            << " tokens per step, max_seq_len " << max_seq_len << ", decode attention "
            << (I.fast_decode ? "tuned" : "generic") << ", CUDA graphs " << (o.cuda_graphs ? "on" : "off")
            << ", sampling on the " << (o.device_sampling ? "device" : "host") << ", fused decode kernels "
            << (o.fuse_decode_kernels ? "on" : "off");
  return absl::OkStatus();
}

absl::Status CudaModelRunner::InitRank(Rank& R, const WeightsFrom& from) {
  Impl& I = *impl_;
  const ModelConfig& c = config_;
  const int tp = static_cast<int>(ranks_.size());
  RETURN_IF_CUDA_ERROR(cudaSetDevice(R.device));
  RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&R.stream, cudaStreamNonBlocking));
  RETURN_IF_CUDA_ERROR(cudaEventCreate(&R.step_start));
  RETURN_IF_CUDA_ERROR(cudaEventCreate(&R.step_end));
  if (from.checkpoint != nullptr) {
    ASSIGN_OR_RETURN(R.weights, CudaModelWeights::FromCheckpoint(c, *from.checkpoint, tp, R.index));
  } else {
    ASSIGN_OR_RETURN(R.weights, CudaModelWeights::Random(c, from.seed, tp, R.index));
  }
  const CudaRankShape& s = R.weights->shape();
  const int d = s.head_dim;
  R.layout = kernels::PagedKvLayout{0, s.num_kv_heads, options_.page_size, d};

  const std::vector<float> inv_freq = kernels::ComputeRopeInvFreq(d, c.rope_theta, c.rope_scaling);
  RETURN_IF_CUDA_ERROR(cudaMalloc(reinterpret_cast<void**>(&R.inv_freq), inv_freq.size() * sizeof(float)));
  RETURN_IF_CUDA_ERROR(
      cudaMemcpy(R.inv_freq, inv_freq.data(), inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice));

  ASSIGN_OR_RETURN(R.gemm, kc::CublasLtGemm::Create());
  if (R.index == 0) {
    ASSIGN_OR_RETURN(R.logits_gemm, cuda_engine::LogitsGemm::Create());
  }

  // Decode attention plans for every (batch bucket, KV class) a decode step can have, and the
  // largest split-KV workspace among them.
  std::vector<int> classes;
  for (int len = 1;;) {
    const int cls = cuda_engine::KvClass(len, I.max_kv_len);
    classes.push_back(cls);
    if (cls >= I.max_kv_len) break;
    len = cls + 1;
  }
  if (I.fast_decode) {
    for (int seqs = 1; seqs <= I.max_seqs; seqs *= 2) {
      for (int cls : classes) {
        kc::DecodeAttentionPlan plan;
        RETURN_IF_CUDA_ERROR(kc::PlanDecodeAttention(seqs, s.num_q_heads, s.num_kv_heads, d, cls, &plan));
        R.decode_plans[{seqs, cls}] = plan;
        R.decode_workspace_bytes =
            std::max(R.decode_workspace_bytes, kc::DecodeAttentionWorkspaceBytes(plan, seqs, s.num_q_heads, d));
      }
    }
  }

  // Activations and scratch, one allocation.
  const size_t T = I.max_tokens, S = I.max_seqs, C = I.logits_chunk, H = s.hidden;
  const size_t L = I.max_kv_len, P = CeilDiv(I.max_kv_len, options_.page_size) + 2;
  const size_t hkv = s.num_kv_heads, icap = I.index_capacity;
  OffsetPlanner planner;
  const size_t hidden_at = planner.AddArray<bf16>(T * H);
  const size_t residual_at = planner.AddArray<float>(T * H);
  const size_t qkv_at = planner.AddArray<bf16>(T * s.qkv_size);
  const size_t q_at = planner.AddArray<bf16>(T * s.q_size);
  const size_t k_at = planner.AddArray<bf16>(T * s.kv_size);
  const size_t v_at = planner.AddArray<bf16>(T * s.kv_size);
  const size_t attn_at = planner.AddArray<bf16>(T * s.q_size);
  const size_t q_sub_at = planner.AddArray<bf16>(S * s.q_size);
  const size_t sparse_out_at = planner.AddArray<bf16>(S * s.q_size);
  const size_t gate_up_at = planner.AddArray<bf16>(T * 2 * s.intermediate_padded);
  const size_t act_at = planner.AddArray<bf16>(T * s.intermediate_padded);
  const size_t head_in_at = R.index == 0 ? planner.AddArray<bf16>(C * H) : 0;
  const size_t logits_at = R.index == 0 ? planner.AddArray<float>(C * s.vocab_padded) : 0;
  const bool samples = R.index == 0 && options_.device_sampling;
  const size_t sampled_at = samples ? planner.AddArray<int32_t>(I.sample_capacity) : 0;
  R.sample_workspace_bytes = samples ? kc::SamplingWorkspaceBytes(static_cast<int>(C), c.vocab_size) : 0;
  const size_t sample_ws_at = samples ? planner.Add(R.sample_workspace_bytes) : 0;
  const bool compact_logits = samples && s.vocab_padded != c.vocab_size;
  const size_t sample_logits_at = compact_logits ? planner.AddArray<float>(C * c.vocab_size) : 0;
  const size_t decode_ws_at = planner.Add(R.decode_workspace_bytes);
  size_t scores_at = 0, page_scores_at = 0, pages_at = 0, selected_at = 0, indices_at = 0, counts_at = 0;
  size_t score_ws_at = 0, sparse_ws_at = 0, topk_ws_at = 0;
  if (I.sparse_buffers) {
    scores_at = planner.AddArray<float>(S * hkv * L);
    page_scores_at = planner.AddArray<float>(S * hkv * P);
    pages_at = planner.AddArray<int32_t>(S * hkv * P);
    selected_at = planner.AddArray<int32_t>(S * hkv * icap);
    indices_at = planner.AddArray<int32_t>(S * hkv * icap);
    counts_at = planner.AddArray<int32_t>(S * hkv);
    // Sized for softmax-sum, the aggregation that needs the most (per-chunk statistics).
    R.score_workspace_bytes = kc::ScoreKeysWorkspaceBytes(static_cast<int>(S), s.num_q_heads, static_cast<int>(L),
                                                          kernels::GroupAggregation::kSoftmaxSum);
    score_ws_at = planner.Add(R.score_workspace_bytes);
    R.sparse_workspace_bytes =
        kc::SparseAttentionWorkspaceBytes(static_cast<int>(S), s.num_q_heads, d, static_cast<int>(icap));
    sparse_ws_at = planner.Add(R.sparse_workspace_bytes);
    R.topk_workspace_bytes =
        std::max(kc::TopKWorkspaceBytes(static_cast<int>(S * hkv), static_cast<int>(L), static_cast<int>(L)),
                 kc::TopKWorkspaceBytes(static_cast<int>(S * hkv), static_cast<int>(P), static_cast<int>(P)));
    topk_ws_at = planner.Add(R.topk_workspace_bytes);
  }
  ASSIGN_OR_RETURN(R.buffers, DeviceMemory::Allocate(planner.total(), "activations and scratch"));
  // Rows past a step's tokens are read by GEMMs of padded shapes: keep them finite.
  RETURN_IF_CUDA_ERROR(cudaMemset(R.buffers.get(), 0, planner.total()));
  const DeviceMemory& m = R.buffers;
  R.hidden = m.at<bf16>(hidden_at);
  R.residual = m.at<float>(residual_at);
  R.qkv = m.at<bf16>(qkv_at);
  R.q = m.at<bf16>(q_at);
  R.k = m.at<bf16>(k_at);
  R.v = m.at<bf16>(v_at);
  R.attn = m.at<bf16>(attn_at);
  R.q_sub = m.at<bf16>(q_sub_at);
  R.sparse_out = m.at<bf16>(sparse_out_at);
  R.gate_up = m.at<bf16>(gate_up_at);
  R.act = m.at<bf16>(act_at);
  if (R.index == 0) {
    R.head_in = m.at<bf16>(head_in_at);
    R.logits = m.at<float>(logits_at);
  }
  auto bytes_at = [&](size_t offset, size_t bytes) -> void* {
    return bytes > 0 ? static_cast<void*>(m.at<char>(offset)) : nullptr;
  };
  R.decode_workspace = bytes_at(decode_ws_at, R.decode_workspace_bytes);
  if (samples) {
    R.sampled = m.at<int32_t>(sampled_at);
    R.sample_workspace = bytes_at(sample_ws_at, R.sample_workspace_bytes);
    if (compact_logits) R.sample_logits = m.at<float>(sample_logits_at);
  }
  if (I.sparse_buffers) {
    R.scores = m.at<float>(scores_at);
    R.page_scores = m.at<float>(page_scores_at);
    R.pages = m.at<int32_t>(pages_at);
    R.selected = m.at<int32_t>(selected_at);
    R.indices = m.at<int32_t>(indices_at);
    R.counts = m.at<int32_t>(counts_at);
    R.score_workspace = bytes_at(score_ws_at, R.score_workspace_bytes);
    R.sparse_workspace = bytes_at(sparse_ws_at, R.sparse_workspace_bytes);
    R.topk_workspace = bytes_at(topk_ws_at, R.topk_workspace_bytes);
  }

  // The step staging, before the KV cache takes what is left of the memory.
  ASSIGN_OR_RETURN(R.staging, DeviceMemory::Allocate(I.max_layout.total, "the step staging"));
  R.staged.group_kv_lens.reserve(I.max_seqs);
  R.staged.group_scatter_rows.reserve(I.max_seqs);

  // Every GEMM shape a step can have: token buckets for the layers, chunk buckets for the head.
  const CudaLayerWeights& l0 = R.weights->layer(0);
  for (int m_rows = 1; m_rows <= I.max_tokens; m_rows = m_rows < 64 ? m_rows * 2 : m_rows + 64) {
    RETURN_IF_ERROR(R.gemm->Plan(m_rows, s.qkv_size, s.hidden, l0.qkv_bias != nullptr));
    RETURN_IF_ERROR(R.gemm->Plan(m_rows, s.hidden, s.q_size, l0.o_bias != nullptr));
    RETURN_IF_ERROR(R.gemm->Plan(m_rows, 2 * s.intermediate_padded, s.hidden, false));
    RETURN_IF_ERROR(R.gemm->Plan(m_rows, s.hidden, s.intermediate_padded, false));
  }
  if (R.logits_gemm != nullptr) {
    for (int m_rows = 1; m_rows <= I.logits_chunk; m_rows *= 2) {
      RETURN_IF_ERROR(R.logits_gemm->Plan(m_rows, s.vocab_padded, s.hidden));
    }
  }
  if (R.index == 0) {
    const int marks_per_layer = 16 + 6 * kMaxGraphGroups;
    RETURN_IF_ERROR(R.profiler.Init(c.num_layers * marks_per_layer + 32));
  }
  RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize());
  return absl::OkStatus();
}

absl::Status CudaModelRunner::SizeAndAllocateKvCache() {
  Impl& I = *impl_;
  const int page = options_.page_size;
  const CudaRankShape& s = I.shape;
  const size_t block_elements = size_t(s.num_kv_heads) * page * s.head_dim;
  const size_t metadata_elements = I.quest_supported ? size_t(s.num_kv_heads) * 2 * s.head_dim : 0;
  const size_t bytes_per_block = size_t(I.num_layers) * (2 * block_elements + metadata_elements) * sizeof(bf16) +
                                 (I.quest_supported ? sizeof(int32_t) : 0);
  int64_t blocks = options_.num_kv_blocks;
  if (blocks <= 0) {
    size_t min_free = SIZE_MAX;
    for (auto& rank : ranks_) {
      RETURN_IF_CUDA_ERROR(cudaSetDevice(rank->device));
      size_t free_bytes = 0, total_bytes = 0;
      RETURN_IF_CUDA_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
      min_free = std::min(min_free, free_bytes);
    }
    // Alignment of the per-layer arrays and the graphs' own memory come out of the remainder.
    blocks = static_cast<int64_t>(options_.kv_memory_fraction * static_cast<double>(min_free) /
                                  static_cast<double>(bytes_per_block));
    if (blocks < 1) {
      return absl::ResourceExhaustedError(
          absl::StrCat("kv_memory_fraction ", options_.kv_memory_fraction, " of the ", min_free,
                       " bytes left after the weights leaves no room for one KV block of ", bytes_per_block, " bytes"));
    }
  }
  if (blocks > INT32_MAX / page) {
    return absl::InvalidArgumentError(absl::StrCat(blocks, " KV blocks exceed the int32 slot range"));
  }
  kv_layout_.num_blocks = static_cast<int>(blocks);
  for (auto& rank : ranks_) {
    Rank& R = *rank;
    RETURN_IF_CUDA_ERROR(cudaSetDevice(R.device));
    R.layout.num_blocks = kv_layout_.num_blocks;
    OffsetPlanner planner;
    std::vector<size_t> k_at(I.num_layers), v_at(I.num_layers), meta_at(I.num_layers);
    for (int l = 0; l < I.num_layers; ++l) {
      k_at[l] = planner.AddArray<bf16>(block_elements * blocks);
      v_at[l] = planner.AddArray<bf16>(block_elements * blocks);
      if (I.quest_supported) meta_at[l] = planner.AddArray<bf16>(metadata_elements * blocks);
    }
    ASSIGN_OR_RETURN(R.kv_memory,
                     DeviceMemory::Allocate(planner.total(), absl::StrCat("the KV cache (", blocks, " blocks)")));
    // Zeros rather than leftovers: nothing reads an unwritten slot, but a stray NaN never should.
    RETURN_IF_CUDA_ERROR(cudaMemset(R.kv_memory.get(), 0, planner.total()));
    R.k_cache.resize(I.num_layers);
    R.v_cache.resize(I.num_layers);
    R.quest_metadata.assign(I.num_layers, nullptr);
    for (int l = 0; l < I.num_layers; ++l) {
      R.k_cache[l] = R.kv_memory.at<bf16>(k_at[l]);
      R.v_cache[l] = R.kv_memory.at<bf16>(v_at[l]);
      if (I.quest_supported) R.quest_metadata[l] = R.kv_memory.at<bf16>(meta_at[l]);
    }
    if (I.quest_supported) {
      const size_t bytes = kc::QuestUpdateWorkspaceBytes(R.layout);
      ASSIGN_OR_RETURN(R.quest_workspace, DeviceMemory::Allocate(bytes, "the Quest update workspace"));
      RETURN_IF_CUDA_ERROR(kc::QuestInitUpdateWorkspace(R.layout, R.quest_workspace.get(), R.stream));
    }
    RETURN_IF_CUDA_ERROR(cudaDeviceSynchronize());
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunner::Forward(const ForwardBatch& batch, ForwardOutput* output) {
  if (broken_) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA runner stopped after a failed tensor-parallel step: ", broken_status_.message()));
  }
  Impl& I = *impl_;
  StepPlan& p = I.plan;
  RETURN_IF_ERROR(I.planner->Build(batch, &p));
  const int vocab = config_.vocab_size;
  output->vocab_size = vocab;
  output->row_offsets.assign(p.row_offsets.begin(), p.row_offsets.end());
  output->logits.resize(static_cast<size_t>(p.num_output_rows) * vocab);
  if (options_.device_sampling) {
    output->sampled_tokens.assign(p.num_seqs, -1);
  } else {
    output->sampled_tokens.clear();
  }
  last_step_used_graph_ = false;
  if (p.num_seqs == 0) return absl::OkStatus();

  // Stage the step's arrays once in pinned memory; every rank uploads them.
  ComputeStagingLayout(p.tokens_padded, p.seqs_padded, p.block_stride, p.logit_rows.size(), p.num_groups,
                       p.sample_params.size(), &I.layout);
  char* host = I.host_staging.at<char>(0);
  CopyTo(host, I.layout.token_ids, p.token_ids);
  CopyTo(host, I.layout.positions, p.positions);
  CopyTo(host, I.layout.slots, p.slots);
  CopyTo(host, I.layout.q_indptr, p.q_indptr);
  CopyTo(host, I.layout.kv_lens, p.kv_lens);
  CopyTo(host, I.layout.kv_lens_dense, p.kv_lens_dense);
  CopyTo(host, I.layout.block_tables, p.block_tables);
  CopyTo(host, I.layout.last_rows, p.last_rows);
  CopyTo(host, I.layout.logit_rows, p.logit_rows);
  for (int g = 0; g < p.num_groups; ++g) {
    CopyTo(host, I.layout.group_kv_lens[g], p.groups[g].kv_lens);
    CopyTo(host, I.layout.group_scatter_rows[g], p.groups[g].scatter_rows);
  }
  CopyTo(host, I.layout.sample_params, p.sample_params);
  CopyTo(host, I.layout.sample_steps, p.sample_steps);
  I.out_logits = output->logits.data();
  I.profiling = stage_profiling_;
  I.use_graphs = options_.cuda_graphs && !stage_profiling_ && p.decode_only && p.num_groups <= kMaxGraphGroups;

  absl::Status status;
  if (I.threads == nullptr) {
    RETURN_IF_CUDA_ERROR(cudaSetDevice(ranks_[0]->device));
    status = RunRankStep(0);
  } else {
    // A rank that fails while the others may wait for it inside a collective: abort every
    // communicator (kernels waiting on them return), and refuse further steps.
    auto abort_all = [this] {
      for (auto& rank : ranks_) {
        std::lock_guard<std::mutex> lock(rank->comm_mutex);
        if (rank->comm != nullptr) ncclCommAbort(rank->comm);
        rank->comm = nullptr;
        rank->comm_aborted = true;
      }
    };
    status = I.threads->RunAll(abort_all);
    if (!status.ok()) {
      broken_ = true;
      broken_status_ = status;
      abort_all();
    }
  }
  RETURN_IF_ERROR(status);
  if (p.num_sampled > 0) {
    const int32_t* drawn = I.host_tokens.at<int32_t>(0);
    for (int b = 0; b < p.num_seqs; ++b) {
      if (p.sample_row[b] >= 0) output->sampled_tokens[b] = drawn[p.sample_row[b]];
    }
  }

  // Counters, as the CPU stage counts them: one per (decode step, layer).
  for (int b = 0; b < p.num_seqs; ++b) {
    if (p.attention[b] == cuda_engine::SequenceAttention::kDense) continue;
    SparseAttentionCounters delta;
    if (p.attention[b] == cuda_engine::SequenceAttention::kSparse) {
      delta.sparse_layer_steps = I.num_layers;
    } else {
      delta.dense_fallbacks = I.num_layers;
    }
    counters_[batch.sequences[b].sequence_id] += delta;
    totals_ += delta;
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunner::RunRankStep(int r) {
  Impl& I = *impl_;
  Rank& R = *ranks_[r];
  const StepPlan& p = I.plan;
  const StagingLayout& layout = I.layout;
  const int vocab = config_.vocab_size;
  const cudaStream_t stream = R.stream;

  if (r == 0) RETURN_IF_CUDA_ERROR(cudaEventRecord(R.step_start, stream));
  RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(R.staging.get(), I.host_staging.get(), layout.total, cudaMemcpyHostToDevice, stream));
  StagedArrays& a = R.staged;
  a.token_ids = R.staging.at<int32_t>(layout.token_ids);
  a.positions = R.staging.at<int32_t>(layout.positions);
  a.slots = R.staging.at<int64_t>(layout.slots);
  a.q_indptr = R.staging.at<int32_t>(layout.q_indptr);
  a.kv_lens = R.staging.at<int32_t>(layout.kv_lens);
  a.kv_lens_dense = R.staging.at<int32_t>(layout.kv_lens_dense);
  a.block_tables = R.staging.at<int32_t>(layout.block_tables);
  a.last_rows = R.staging.at<int32_t>(layout.last_rows);
  a.logit_rows = R.staging.at<int32_t>(layout.logit_rows);
  a.group_kv_lens.clear();
  a.group_scatter_rows.clear();
  for (int g = 0; g < p.num_groups; ++g) {
    a.group_kv_lens.push_back(R.staging.at<int32_t>(layout.group_kv_lens[g]));
    a.group_scatter_rows.push_back(R.staging.at<int32_t>(layout.group_scatter_rows[g]));
  }
  a.sample_params = R.staging.at<kernels::SamplingParams>(layout.sample_params);
  a.sample_steps = R.staging.at<uint64_t>(layout.sample_steps);

  bool replayed = false;
  if (I.use_graphs) {
    GraphKey key;
    key.seqs = p.seqs_padded;
    key.kv_class = p.kv_class;
    key.pure = p.pure_sparse;
    key.num_groups = p.num_groups;
    for (int g = 0; g < p.num_groups; ++g) key.groups[g] = p.groups[g].key;
    auto it = R.graphs.find(key);
    if (it == R.graphs.end() && R.seen_keys.count(key) > 0 &&
        static_cast<int>(R.graphs.size()) < options_.max_cached_graphs) {
      // Captured on the second sighting: the first ran eagerly, so every lazy initialisation (NCCL
      // connections, kernel attributes, cuBLASLt) happened outside the capture.
      RETURN_IF_CUDA_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      const absl::Status enqueued = EnqueueLayers(R);
      cudaGraph_t graph = nullptr;
      const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
      if (!enqueued.ok()) {
        if (graph != nullptr) cudaGraphDestroy(graph);
        return Annotate(enqueued, "capturing a decode graph");
      }
      RETURN_IF_CUDA_ERROR(ended);
      cudaGraphExec_t exec = nullptr;
      const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      RETURN_IF_CUDA_ERROR(instantiated);
      it = R.graphs.emplace(key, exec).first;
    }
    if (it != R.graphs.end()) {
      // A graph of a tensor-parallel step holds the communicator: not after an abort.
      std::lock_guard<std::mutex> lock(R.comm_mutex);
      if (R.comm_aborted) return absl::AbortedError("another tensor-parallel rank failed");
      RETURN_IF_CUDA_ERROR(cudaGraphLaunch(it->second, stream));
      replayed = true;
    } else if (R.seen_keys.size() < 4096) {
      R.seen_keys.insert(key);
    }
  }
  const bool profile = I.profiling && r == 0;
  if (profile) R.profiler.Begin(stream);
  if (!replayed) RETURN_IF_ERROR(EnqueueLayers(R));

  if (r == 0) {
    if (p.decode_only) {
      // Outside the graph: the graph key says nothing about sampling. Row b is sequence b.
      if (p.num_sampled > 0) {
        if (profile) R.profiler.Mark(Stage::kSampling);
        RETURN_IF_ERROR(EnqueueSampling(R, R.logits, 0, p.num_seqs));
      }
      RETURN_IF_CUDA_ERROR(cudaEventRecord(R.step_end, stream));
      if (profile) R.profiler.End();
      // Only what the engine asked for comes back: no logits rows when it only wants tokens.
      if (p.num_output_rows > 0) {
        RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(I.host_logits.get(), vocab * sizeof(float), R.logits,
                                               I.shape.vocab_padded * sizeof(float), vocab * sizeof(float),
                                               p.num_seqs, cudaMemcpyDeviceToHost, stream));
      }
      if (p.num_sampled > 0) {
        RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(I.host_tokens.get(), R.sampled, p.num_seqs * sizeof(int32_t),
                                             cudaMemcpyDeviceToHost, stream));
      }
      RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
      const float* rows = I.host_logits.at<float>(0);
      for (int out_row = 0; out_row < p.num_output_rows; ++out_row) {
        std::memcpy(I.out_logits + static_cast<size_t>(out_row) * vocab,
                    rows + static_cast<size_t>(p.decode_logit_source[out_row]) * vocab, vocab * sizeof(float));
      }
    } else {
      RETURN_IF_ERROR(EnqueueChunkedLogits(R));
      if (profile) R.profiler.End();
    }
    if (profile) stage_times_ = R.profiler.Finish();
    float ms = 0.0f;
    RETURN_IF_CUDA_ERROR(cudaEventElapsedTime(&ms, R.step_start, R.step_end));
    last_step_device_ms_ = ms;
    last_step_used_graph_ = replayed;
  } else {
    RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunner::AllReduceHidden(Rank& R) {
  if (ranks_.size() == 1) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(R.comm_mutex);
  if (R.comm_aborted) return absl::AbortedError("another tensor-parallel rank failed; the communicators are aborted");
  const size_t count = static_cast<size_t>(impl_->plan.tokens_padded) * impl_->shape.hidden;
  RETURN_IF_NCCL_ERROR(ncclAllReduce(R.hidden, R.hidden, count, ncclBfloat16, ncclSum, R.comm, R.stream));
  return absl::OkStatus();
}

absl::Status CudaModelRunner::EnqueueLayers(Rank& R) {
  Impl& I = *impl_;
  const StepPlan& p = I.plan;
  const StagedArrays& a = R.staged;
  const CudaModelWeights& w = *R.weights;
  const CudaRankShape& s = w.shape();
  const cudaStream_t stream = R.stream;
  const int T = p.tokens_padded;
  const int H = s.hidden;
  const int ip = s.intermediate_padded;
  StageProfiler* prof = I.profiling && R.index == 0 ? &R.profiler : nullptr;
  auto mark = [prof](Stage stage) {
    if (prof != nullptr) prof->Mark(stage);
  };
  // Decode steps fold their keys into the Quest bounds inside the fused kernel (one token per
  // sequence); mixed steps keep the order-independent recompute (EnqueueAttention).
  const bool fused = options_.fuse_decode_kernels;

  mark(Stage::kHead);
  RETURN_IF_CUDA_ERROR(kc::Embedding(a.token_ids, T, w.embed_tokens(), H, R.hidden, stream));
  // Layer 0's fused add then starts from residual = embedding.
  RETURN_IF_CUDA_ERROR(cudaMemsetAsync(R.residual, 0, size_t(T) * H * sizeof(float), stream));
  for (int l = 0; l < I.num_layers; ++l) {
    const CudaLayerWeights& lw = w.layer(l);
    mark(Stage::kNorm);
    RETURN_IF_CUDA_ERROR(kc::FusedAddRmsNorm(R.hidden, R.residual, lw.input_norm, T, H, I.eps, stream));
    mark(Stage::kGemm);
    RETURN_IF_ERROR(R.gemm->Run(R.hidden, lw.qkv_proj, lw.qkv_bias, T, s.qkv_size, H, R.qkv, stream));
    mark(Stage::kPrep);
    if (fused) {
      bf16* bounds = p.decode_only && p.quest_update ? R.quest_metadata[l] : nullptr;
      RETURN_IF_CUDA_ERROR(cuda_engine::QkvPrepareAndAppend(
          R.qkv, T, s.num_q_heads, s.num_kv_heads, s.head_dim, config_.qk_norm ? lw.q_norm : nullptr,
          config_.qk_norm ? lw.k_norm : nullptr, I.eps, a.positions, R.inv_freq, a.slots, R.layout, R.q,
          R.k_cache[l], R.v_cache[l], bounds, stream));
    } else {
      RETURN_IF_CUDA_ERROR(cuda_engine::SplitQkv(R.qkv, T, s.q_size, s.kv_size, R.q, R.k, R.v, stream));
      if (config_.qk_norm) {
        RETURN_IF_CUDA_ERROR(kc::QkNormRope(R.q, R.k, lw.q_norm, lw.k_norm, I.eps, a.positions, T, s.num_q_heads,
                                            s.num_kv_heads, s.head_dim, R.inv_freq, stream));
      } else {
        RETURN_IF_CUDA_ERROR(
            kc::Rope(R.q, R.k, a.positions, T, s.num_q_heads, s.num_kv_heads, s.head_dim, R.inv_freq, stream));
      }
      RETURN_IF_CUDA_ERROR(kc::PagedKvAppend(R.k, R.v, T, a.slots, R.layout, R.k_cache[l], R.v_cache[l], stream));
    }
    RETURN_IF_ERROR(EnqueueAttention(R, l));
    mark(Stage::kGemm);
    RETURN_IF_ERROR(R.gemm->Run(R.attn, lw.o_proj, lw.o_bias, T, H, s.q_size, R.hidden, stream));
    mark(Stage::kAllReduce);
    RETURN_IF_ERROR(AllReduceHidden(R));
    mark(Stage::kNorm);
    RETURN_IF_CUDA_ERROR(kc::FusedAddRmsNorm(R.hidden, R.residual, lw.post_attention_norm, T, H, I.eps, stream));
    mark(Stage::kGemm);
    RETURN_IF_ERROR(R.gemm->Run(R.hidden, lw.gate_up_proj, nullptr, T, 2 * ip, H, R.gate_up, stream));
    mark(Stage::kActivation);
    RETURN_IF_CUDA_ERROR(kc::SiluAndMul(R.gate_up, T, ip, R.act, stream));
    mark(Stage::kGemm);
    RETURN_IF_ERROR(R.gemm->Run(R.act, lw.down_proj, nullptr, T, H, ip, R.hidden, stream));
    mark(Stage::kAllReduce);
    RETURN_IF_ERROR(AllReduceHidden(R));
  }
  mark(Stage::kHead);
  if (R.index != 0) return absl::OkStatus();
  // Final norm over every row (cheap), so that the logits rows only need gathering.
  RETURN_IF_CUDA_ERROR(kc::FusedAddRmsNorm(R.hidden, R.residual, w.final_norm(), T, H, I.eps, stream));
  if (p.decode_only) {
    // Decode steps compute the logits of every (padded) row; the host keeps the wanted ones.
    RETURN_IF_ERROR(R.logits_gemm->Run(R.hidden, w.lm_head(), T, s.vocab_padded, H, R.logits, stream));
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunner::EnqueueAttention(Rank& R, int l) {
  Impl& I = *impl_;
  const StepPlan& p = I.plan;
  const StagedArrays& a = R.staged;
  const CudaRankShape& s = R.weights->shape();
  const cudaStream_t stream = R.stream;
  StageProfiler* prof = I.profiling && R.index == 0 ? &R.profiler : nullptr;
  const bf16* k_cache = R.k_cache[l];
  const bf16* v_cache = R.v_cache[l];

  // With the fused kernels, decode steps already folded their keys into the bounds.
  if (p.quest_update && !(options_.fuse_decode_kernels && p.decode_only)) {
    if (prof != nullptr) prof->Mark(Stage::kEstimate);
    RETURN_IF_CUDA_ERROR(kc::QuestUpdateMetadata(k_cache, R.layout, a.slots, p.tokens_padded, R.quest_metadata[l],
                                                 R.quest_workspace.get(), R.quest_workspace.size(), stream));
  }
  if (prof != nullptr) prof->Mark(Stage::kAttention);
  if (p.decode_only) {
    if (!p.pure_sparse) {
      if (I.fast_decode) {
        auto it = R.decode_plans.find({p.seqs_padded, p.kv_class});
        if (it == R.decode_plans.end()) {
          return absl::InternalError(
              absl::StrCat("no decode attention plan for batch ", p.seqs_padded, " and KV class ", p.kv_class));
        }
        RETURN_IF_CUDA_ERROR(kc::PagedDecodeAttention(
            R.q, s.num_q_heads, a.kv_lens_dense, p.seqs_padded, a.block_tables, p.block_stride, R.layout, k_cache,
            v_cache, I.scale, it->second, R.decode_workspace, R.decode_workspace_bytes, R.attn, stream));
      } else {
        RETURN_IF_CUDA_ERROR(cuda_engine::GenericPagedAttention(
            R.q, s.num_q_heads, a.q_indptr, a.kv_lens_dense, p.seqs_padded, p.tokens_padded, a.block_tables,
            p.block_stride, R.layout, k_cache, v_cache, I.scale, R.attn, stream));
      }
    }
  } else if (I.fast_prefill) {
    RETURN_IF_CUDA_ERROR(kc::PagedPrefillAttention(R.q, s.num_q_heads, a.q_indptr, a.kv_lens, p.num_seqs, p.num_tokens,
                                                   p.max_q_len, a.block_tables, p.block_stride, R.layout, k_cache,
                                                   v_cache, I.scale, R.attn, stream));
  } else {
    RETURN_IF_CUDA_ERROR(cuda_engine::GenericPagedAttention(R.q, s.num_q_heads, a.q_indptr, a.kv_lens, p.num_seqs,
                                                            p.num_tokens, a.block_tables, p.block_stride, R.layout,
                                                            k_cache, v_cache, I.scale, R.attn, stream));
  }
  if (p.num_groups > 0) {
    // Decode steps have one row per sequence already; mixed steps gather each sequence's last row.
    const bf16* q_sub = R.q;
    if (!p.decode_only) {
      RETURN_IF_CUDA_ERROR(cuda_engine::GatherRows(R.q, a.last_rows, p.seqs_padded, s.q_size, R.q_sub, stream));
      q_sub = R.q_sub;
    }
    for (int g = 0; g < p.num_groups; ++g) RETURN_IF_ERROR(EnqueueSparseGroup(R, l, g, q_sub));
  }
  if (prof != nullptr) prof->Mark(Stage::kRest);
  return absl::OkStatus();
}

absl::Status CudaModelRunner::EnqueueSparseGroup(Rank& R, int l, int g, const bf16* q_sub) {
  Impl& I = *impl_;
  const StepPlan& p = I.plan;
  const SparseGroupPlan& group = p.groups[g];
  const StagedArrays& a = R.staged;
  const CudaRankShape& s = R.weights->shape();
  const cudaStream_t stream = R.stream;
  StageProfiler* prof = I.profiling && R.index == 0 ? &R.profiler : nullptr;
  const int n = p.seqs_padded;
  const int hkv = s.num_kv_heads;
  const int kv_class = p.kv_class;
  const int page = options_.page_size;
  const int32_t* kv_lens = a.group_kv_lens[g];
  const bf16* k_cache = R.k_cache[l];

  if (prof != nullptr) prof->Mark(Stage::kEstimate);
  if (group.key.policy == SparsePolicy::kOracle) {
    kernels::KeyScoringParams params;
    params.scale = I.scale;
    params.sinks = group.sinks;
    params.recent_exclude = group.recent;
    params.aggregation = KernelAggregation(group.key.aggregation);
    RETURN_IF_CUDA_ERROR(kc::ScoreKeys(q_sub, n, s.num_q_heads, kv_lens, kv_class, a.block_tables, p.block_stride,
                                       R.layout, k_cache, params, R.scores, kv_class, R.score_workspace,
                                       R.score_workspace_bytes, stream));
    if (prof != nullptr) prof->Mark(Stage::kTopK);
    RETURN_IF_CUDA_ERROR(kc::TopK(R.scores, n * hkv, kv_class, nullptr, kv_class, group.num_selected, R.selected,
                                  nullptr, R.topk_workspace, R.topk_workspace_bytes, stream));
  } else {
    const int max_pages = CeilDiv(kv_class, page);
    kernels::QuestScoringParams params;
    params.sinks = group.sinks;
    params.recent = group.recent;
    params.aggregation = group.key.aggregation == ScoreAggregation::kMax ? kernels::GroupAggregation::kMax
                                                                         : kernels::GroupAggregation::kSum;
    RETURN_IF_CUDA_ERROR(kc::QuestScorePages(q_sub, n, s.num_q_heads, kv_lens, a.block_tables, p.block_stride, R.layout,
                                             R.quest_metadata[l], params, R.page_scores, max_pages, max_pages, stream));
    if (prof != nullptr) prof->Mark(Stage::kTopK);
    RETURN_IF_CUDA_ERROR(kc::TopK(R.page_scores, n * hkv, max_pages, nullptr, max_pages, group.quest_pages, R.pages,
                                  nullptr, R.topk_workspace, R.topk_workspace_bytes, stream));
    if (options_.fuse_decode_kernels) {
      RETURN_IF_CUDA_ERROR(cuda_engine::QuestBuildSparseIndices(R.pages, n, hkv, group.quest_pages, page, kv_lens,
                                                                group.sinks, group.recent, R.indices,
                                                                group.max_indices, R.counts, stream));
    } else {
      RETURN_IF_CUDA_ERROR(
          kc::QuestExpandPages(R.pages, n, hkv, group.quest_pages, kv_lens, page, R.selected, stream));
    }
  }
  if (group.key.policy == SparsePolicy::kOracle || !options_.fuse_decode_kernels) {
    RETURN_IF_CUDA_ERROR(kc::BuildSparseIndices(R.selected, n, hkv, group.num_selected, kv_lens, group.sinks,
                                                group.recent, R.indices, group.max_indices, R.counts, stream));
  }
  if (prof != nullptr) prof->Mark(Stage::kAttention);
  bf16* out = p.pure_sparse ? R.attn : R.sparse_out;
  RETURN_IF_CUDA_ERROR(kc::SparseAttention(q_sub, n, s.num_q_heads, R.indices, R.counts, group.max_indices,
                                           a.block_tables, p.block_stride, R.layout, k_cache, R.v_cache[l], I.scale,
                                           out, R.sparse_workspace, R.sparse_workspace_bytes, stream));
  if (!p.pure_sparse) {
    RETURN_IF_CUDA_ERROR(cuda_engine::ScatterRows(R.sparse_out, a.group_scatter_rows[g], n, s.q_size, R.attn, stream));
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunner::EnqueueChunkedLogits(Rank& R) {
  Impl& I = *impl_;
  const StepPlan& p = I.plan;
  const CudaRankShape& s = R.weights->shape();
  const cudaStream_t stream = R.stream;
  const int vocab = config_.vocab_size;
  const int chunk = I.logits_chunk;
  StageProfiler* prof = I.profiling ? &R.profiler : nullptr;
  if (p.num_logit_rows == 0) RETURN_IF_CUDA_ERROR(cudaEventRecord(R.step_end, stream));
  for (int first = 0; first < p.num_logit_rows; first += chunk) {
    const int rows = std::min(chunk, p.num_logit_rows - first);
    const int m = cuda_engine::BatchBucket(rows);
    if (prof != nullptr) prof->Mark(Stage::kHead);
    RETURN_IF_CUDA_ERROR(
        cuda_engine::GatherRows(R.hidden, R.staged.logit_rows + first, m, s.hidden, R.head_in, stream));
    RETURN_IF_ERROR(R.logits_gemm->Run(R.head_in, R.weights->lm_head(), m, s.vocab_padded, s.hidden, R.logits, stream));
    // Computed rows are returned rows first (in output order), then rows only sampled.
    int returned = 0;
    while (returned < rows && p.logit_row_output[first + returned] >= 0) ++returned;
    bool sampled = false;
    for (int b = 0; b < p.num_seqs && !sampled; ++b) {
      sampled = p.sample_row[b] >= first && p.sample_row[b] < first + rows;
    }
    if (sampled) {
      if (prof != nullptr) prof->Mark(Stage::kSampling);
      RETURN_IF_ERROR(EnqueueSampling(R, R.logits, first, rows));
    }
    if (first + rows == p.num_logit_rows) RETURN_IF_CUDA_ERROR(cudaEventRecord(R.step_end, stream));
    if (returned > 0) {
      RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(I.host_logits.get(), vocab * sizeof(float), R.logits,
                                             s.vocab_padded * sizeof(float), vocab * sizeof(float), returned,
                                             cudaMemcpyDeviceToHost, stream));
      RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
      std::memcpy(I.out_logits + static_cast<size_t>(p.logit_row_output[first]) * vocab, I.host_logits.get(),
                  static_cast<size_t>(returned) * vocab * sizeof(float));
    }
  }
  if (p.num_sampled > 0) {
    RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(I.host_tokens.get(), R.sampled, p.num_logit_rows * sizeof(int32_t),
                                         cudaMemcpyDeviceToHost, stream));
  }
  RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

absl::Status CudaModelRunner::EnqueueSampling(Rank& R, const float* logits, int first, int rows) {
  Impl& I = *impl_;
  const int vocab = config_.vocab_size;
  const int padded = I.shape.vocab_padded;
  if (R.sampled == nullptr || first < 0 || rows <= 0 || first + rows > I.sample_capacity || rows > I.logits_chunk) {
    return absl::InternalError(absl::StrCat("on-device sampling of rows [", first, ", ", first + rows,
                                            ") outside the sampling buffers (", I.sample_capacity, " rows)"));
  }
  const float* rows_at = logits;
  if (padded != vocab) {
    // The sampler reads rows of exactly `vocab` floats: drop the zero-weight padding columns.
    RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(R.sample_logits, vocab * sizeof(float), logits, padded * sizeof(float),
                                           vocab * sizeof(float), rows, cudaMemcpyDeviceToDevice, R.stream));
    rows_at = R.sample_logits;
  }
  RETURN_IF_CUDA_ERROR(kc::Sample(rows_at, rows, vocab, R.staged.sample_params + first, R.staged.sample_steps + first,
                                  R.sample_workspace, R.sample_workspace_bytes, R.sampled + first, R.stream));
  return absl::OkStatus();
}

void CudaModelRunner::ReleaseSequence(int64_t sequence_id) { counters_.erase(sequence_id); }

absl::Status CudaModelRunner::ClearGraphs() {
  for (auto& rank : ranks_) {
    RETURN_IF_CUDA_ERROR(cudaSetDevice(rank->device));
    RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(rank->stream));
    for (auto& [key, exec] : rank->graphs) RETURN_IF_CUDA_ERROR(cudaGraphExecDestroy(exec));
    rank->graphs.clear();
    rank->seen_keys.clear();
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunner::set_fuse_decode_kernels(bool enabled) {
  if (enabled == options_.fuse_decode_kernels) return absl::OkStatus();
  RETURN_IF_ERROR(ClearGraphs());
  options_.fuse_decode_kernels = enabled;
  return absl::OkStatus();
}

absl::Status CudaModelRunner::Warmup() {
  if (broken_) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA runner stopped after a failed tensor-parallel step: ", broken_status_.message()));
  }
  const auto start = std::chrono::steady_clock::now();
  Impl& I = *impl_;
  const int page = options_.page_size;
  warmup_ = CudaWarmupReport{};
  const int graphs_before = num_cached_graphs();

  // Every sequence of a warm-up step uses block 0 for all its pages: the steps need no free
  // blocks, and what they write is wiped below.
  const std::vector<int32_t> table(CeilDiv(I.max_kv_len, page), 0);
  const std::vector<int32_t> decode_token = {0};
  const std::vector<int32_t> prefill_tokens = {0, 0};
  kernels::SamplingParams sampling;  // non-greedy, so that the whole sampler is loaded
  sampling.temperature = 0.7f;
  sampling.top_p = 0.9f;
  SparsePolicyConfig dense;
  dense.policy = SparsePolicy::kDense;
  const SparsePolicyConfig& fallback = options_.default_sparse;
  // (A quest default with another page size is refused per request; it has no graphs to warm.)
  const bool default_sparse =
      options_.per_sequence_policies &&
      ((fallback.policy == SparsePolicy::kQuest && I.quest_supported && fallback.quest_page_size == page) ||
       (fallback.policy == SparsePolicy::kOracle && I.oracle_supported));
  const int64_t threshold = options_.dense_below_threshold ? fallback.SparseFromContext() : 0;

  ForwardOutput output;
  auto run = [&](const ForwardBatch& batch) -> absl::Status {
    RETURN_IF_ERROR(Forward(batch, &output));
    ++warmup_.steps;
    return absl::OkStatus();
  };
  auto sequence = [&](int64_t id, int kv_len, const SparsePolicyConfig* policy) {
    ForwardSequence fs;
    fs.sequence_id = -1 - id;  // not an id the engine hands out; counters are reset anyway
    fs.tokens = decode_token;
    fs.start_position = kv_len - 1;
    fs.block_table = table;
    fs.logits = LogitsWanted::kNone;
    fs.sparse = policy;
    if (options_.device_sampling) fs.sampling = &sampling;
    return fs;
  };

  // A mixed step: the prefill kernels and the chunked LM head get loaded.
  {
    ForwardBatch batch;
    ForwardSequence fs = sequence(0, 2, &dense);
    fs.tokens = prefill_tokens;
    fs.start_position = 0;
    fs.logits = LogitsWanted::kLast;
    batch.sequences.push_back(fs);
    RETURN_IF_ERROR(Annotate(run(batch), "warm-up prefill step"));
  }

  std::vector<int> classes;
  for (int len = 1;;) {
    const int cls = cuda_engine::KvClass(len, I.max_kv_len);
    classes.push_back(cls);
    if (cls >= I.max_kv_len) break;
    len = cls + 1;
  }
  // Decode shapes. Sequence 0 sets the KV class; the others are as short as the variant allows.
  // Variants: dense; the default group with members only ("pure"); the default group with a
  // non-member (every group sequence short of the threshold, or sequence 0 a member and the rest
  // not). The two runs of a key: the first runs eagerly (lazy initialisation), the second
  // captures; a key already captured replays at once.
  bool cache_full = false;
  for (int bucket = 1; bucket <= I.max_seqs && !cache_full; bucket *= 2) {
    for (int cls : classes) {
      if (cache_full) break;
      // Without graphs there is nothing to capture: one shape loads the decode kernels.
      if (!options_.cuda_graphs && (bucket > 1 || cls != classes.front())) continue;
      std::vector<std::vector<ForwardSequence>> variants;
      {
        std::vector<ForwardSequence> v;
        for (int b = 0; b < bucket; ++b) v.push_back(sequence(b, b == 0 ? cls : 1, &dense));
        variants.push_back(std::move(v));
      }
      if (default_sparse) {
        if (cls > threshold) {
          std::vector<ForwardSequence> v;
          const int member_len = static_cast<int>(std::min<int64_t>(threshold + 1, cls));
          for (int b = 0; b < bucket; ++b) v.push_back(sequence(b, b == 0 ? cls : member_len, &fallback));
          variants.push_back(std::move(v));
        }
        if (bucket > 1 || cls <= threshold) {
          std::vector<ForwardSequence> v;
          for (int b = 0; b < bucket; ++b) v.push_back(sequence(b, b == 0 ? cls : 1, &fallback));
          variants.push_back(std::move(v));
        }
      }
      for (const std::vector<ForwardSequence>& v : variants) {
        if (cache_full) break;
        ForwardBatch batch;
        batch.sequences = v;
        for (int attempt = 0; attempt < 2; ++attempt) {
          RETURN_IF_ERROR(Annotate(run(batch), absl::StrCat("warm-up decode step (batch ", bucket, ", KV class ", cls,
                                                            ")")));
          if (!options_.cuda_graphs || last_step_used_graph_) break;
        }
        if (options_.cuda_graphs && !last_step_used_graph_) cache_full = true;
      }
    }
  }
  if (cache_full) {
    LOG(WARNING) << "CUDA runner warm-up: the graph cache (max_cached_graphs " << options_.max_cached_graphs
                 << ") is full; later decode shapes are captured on their second step or run eagerly";
  }

  // Forget the warm-up: zeroed KV storage and Quest bounds, no policy counters.
  for (auto& rank : ranks_) {
    RETURN_IF_CUDA_ERROR(cudaSetDevice(rank->device));
    RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(rank->stream));
    RETURN_IF_CUDA_ERROR(cudaMemset(rank->kv_memory.get(), 0, rank->kv_memory.size()));
    rank->seen_keys.clear();
  }
  counters_.clear();
  totals_ = SparseAttentionCounters{};
  warmup_.graphs_captured = num_cached_graphs() - graphs_before;
  warmup_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  LOG(INFO) << "CUDA runner warm-up: " << warmup_.steps << " steps, " << warmup_.graphs_captured
            << " decode graphs captured (" << num_cached_graphs() << " cached) in " << warmup_.seconds << " s";
  return absl::OkStatus();
}

SparseAttentionCounters CudaModelRunner::SequenceSparseCounters(int64_t sequence_id) const {
  auto it = counters_.find(sequence_id);
  return it == counters_.end() ? SparseAttentionCounters{} : it->second;
}

absl::Status CudaModelRunner::FillSyntheticKv(absl::Span<const SyntheticKvSequence> sequences, uint64_t seed) {
  const int page = options_.page_size;
  std::vector<int32_t> blocks;
  std::vector<int64_t> slots;
  for (const SyntheticKvSequence& seq : sequences) {
    if (seq.num_tokens < 0 || seq.num_tokens > impl_->max_kv_len ||
        static_cast<int64_t>(seq.block_table.size()) * page < seq.num_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("synthetic KV fill of ", seq.num_tokens, " tokens needs a block table of at least ",
                       CeilDiv(seq.num_tokens, page), " blocks and at most ", impl_->max_kv_len, " tokens"));
    }
    for (int j = 0; j < CeilDiv(seq.num_tokens, page); ++j) {
      const int32_t block = seq.block_table[j];
      if (block < 0 || block >= kv_layout_.num_blocks) {
        return absl::InvalidArgumentError(
            absl::StrCat("synthetic KV fill: block ", block, " outside [0, ", kv_layout_.num_blocks, ")"));
      }
      blocks.push_back(block);
    }
    for (int t = 0; t < seq.num_tokens; ++t) slots.push_back(int64_t{seq.block_table[t / page]} * page + t % page);
  }
  for (auto& rank : ranks_) {
    Rank& R = *rank;
    RETURN_IF_CUDA_ERROR(cudaSetDevice(R.device));
    ASSIGN_OR_RETURN(DeviceMemory device_blocks,
                     DeviceMemory::Allocate(blocks.size() * sizeof(int32_t), "the synthetic fill's block list"));
    ASSIGN_OR_RETURN(DeviceMemory device_slots,
                     DeviceMemory::Allocate(slots.size() * sizeof(int64_t), "the synthetic fill's slots"));
    if (!blocks.empty()) {
      RETURN_IF_CUDA_ERROR(
          cudaMemcpy(device_blocks.get(), blocks.data(), blocks.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    }
    if (!slots.empty()) {
      RETURN_IF_CUDA_ERROR(
          cudaMemcpy(device_slots.get(), slots.data(), slots.size() * sizeof(int64_t), cudaMemcpyHostToDevice));
    }
    for (int l = 0; l < impl_->num_layers; ++l) {
      RETURN_IF_CUDA_ERROR(cuda_engine::FillRandomKvBlocks(
          R.k_cache[l], R.v_cache[l], R.layout, device_blocks.at<int32_t>(0), static_cast<int>(blocks.size()), seed, l,
          R.index * R.layout.num_kv_heads, 1.0f, R.stream));
      if (impl_->quest_supported && !slots.empty()) {
        RETURN_IF_CUDA_ERROR(kc::QuestUpdateMetadata(R.k_cache[l], R.layout, device_slots.at<int64_t>(0),
                                                     static_cast<int>(slots.size()), R.quest_metadata[l],
                                                     R.quest_workspace.get(), R.quest_workspace.size(), R.stream));
      }
    }
    RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(R.stream));
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunner::ReadKeys(absl::Span<const int32_t> block_table, int layer, int32_t start,
                                       int32_t num_tokens, float* out) const {
  const int page = options_.page_size;
  if (layer < 0 || layer >= impl_->num_layers || start < 0 || num_tokens < 0 ||
      int64_t{start} + num_tokens > static_cast<int64_t>(block_table.size()) * page) {
    return absl::InvalidArgumentError(absl::StrCat("ReadKeys: layer ", layer, ", positions [", start, ", ",
                                                   int64_t{start} + num_tokens, ") outside the cache of a ",
                                                   block_table.size(), "-block sequence"));
  }
  const int d = impl_->shape.head_dim;
  const int total_heads = kv_layout_.num_kv_heads;
  std::vector<uint16_t> block(static_cast<size_t>(ranks_[0]->layout.block_stride()));
  for (const auto& rank : ranks_) {
    const Rank& R = *rank;
    RETURN_IF_CUDA_ERROR(cudaSetDevice(R.device));
    const int local_heads = R.layout.num_kv_heads;
    int current_block = -1;
    for (int32_t i = 0; i < num_tokens; ++i) {
      const int32_t position = start + i;
      const int32_t b = block_table[position / page];
      if (b < 0 || b >= kv_layout_.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("ReadKeys: block ", b, " outside the cache"));
      }
      if (b != current_block) {
        RETURN_IF_CUDA_ERROR(cudaMemcpy(block.data(), R.k_cache[layer] + R.layout.Offset(b, 0, 0),
                                        block.size() * sizeof(uint16_t), cudaMemcpyDeviceToHost));
        current_block = b;
      }
      for (int h = 0; h < local_heads; ++h) {
        const uint16_t* src = block.data() + R.layout.Offset(0, h, position % page);
        float* dst = out + (static_cast<size_t>(i) * total_heads + R.index * local_heads + h) * d;
        for (int e = 0; e < d; ++e) dst[e] = Bf16ToFloat(src[e]);
      }
    }
  }
  return absl::OkStatus();
}

int CudaModelRunner::num_cached_graphs() const {
  int n = 0;
  for (const auto& rank : ranks_) n += static_cast<int>(rank->graphs.size());
  return n;
}

size_t CudaModelRunner::step_weight_bytes() const {
  size_t bytes = 0;
  for (const auto& rank : ranks_) bytes += rank->weights->step_read_bytes();
  return bytes;
}

size_t CudaModelRunner::rank_step_weight_bytes(int rank) const { return ranks_[rank]->weights->step_read_bytes(); }

size_t CudaModelRunner::kv_cache_bytes() const {
  return size_t(2) * impl_->num_layers * kv_layout_.num_blocks * kv_layout_.block_stride() * sizeof(bf16);
}

size_t CudaModelRunner::quest_metadata_bytes() const {
  if (!impl_->quest_supported) return 0;
  return size_t(impl_->num_layers) * kv_layout_.num_blocks * kv_layout_.num_kv_heads * 2 * kv_layout_.head_dim *
         sizeof(bf16);
}

size_t CudaModelRunner::kv_bytes_per_token_per_layer() const {
  return size_t(2) * kv_layout_.num_kv_heads * kv_layout_.head_dim * sizeof(bf16);
}

int CudaModelRunner::max_seq_len() const { return impl_->max_kv_len; }

bool CudaModelRunner::fast_decode_attention() const { return impl_->fast_decode; }

}  // namespace asyncspade
