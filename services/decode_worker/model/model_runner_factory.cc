#include "services/decode_worker/model/model_runner_factory.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config/random_weight_presets.h"
#include "common/status.h"
#include "services/decode_worker/model/cpu_model_runner.h"
#include "services/decode_worker/model/cpu_model_weights.h"

#if ASYNCSPADE_WITH_CUDA
#include "services/decode_worker/model/cuda/cuda_model_runner.h"
#endif

namespace asyncspade {
namespace {

[[maybe_unused]] int MaxSeqLen(const ModelRunnerFactoryOptions& options, const ModelConfig& model) {
  if (options.max_seq_len > 0) return options.max_seq_len;
  return std::min(model.max_position_embeddings, kDefaultMaxSeqLenCap);
}

absl::StatusOr<std::unique_ptr<ModelRunner>> CreateCpuRunner(const DeploymentConfig& deployment,
                                                             ModelRunnerFactoryOptions options) {
  if (deployment.model.random_weights.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(deployment.source, ": model.random_weights (", *deployment.model.random_weights,
                     ") is for GPU benchmarks; a CPU decode worker needs a checkpoint in model.path"));
  }
  if (!deployment.decode_workers.kv_cache.blocks.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        deployment.source,
        ": decode_workers.kv_cache.blocks is required on the CPU (memory_fraction sizes GPU memory); set e.g. "
        "blocks: 512"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<CpuModelWeights> weights, CpuModelWeights::Load(deployment.model.path));
  CpuModelRunnerOptions runner_options;
  runner_options.num_kv_blocks = static_cast<int>(*deployment.decode_workers.kv_cache.blocks);
  runner_options.page_size = deployment.decode_workers.kv_cache.page_size;
  ASSIGN_OR_RETURN(std::unique_ptr<CpuModelRunner> runner,
                   CpuModelRunner::Create(std::shared_ptr<const CpuModelWeights>(std::move(weights)), runner_options,
                                          std::move(options.cpu_attention)));
  return std::unique_ptr<ModelRunner>(std::move(runner));
}

absl::StatusOr<std::unique_ptr<ModelRunner>> CreateCudaRunner(const DeploymentConfig& deployment,
                                                              const std::vector<int>& gpus,
                                                              const ModelRunnerFactoryOptions& options) {
#if ASYNCSPADE_WITH_CUDA
  const DecodeWorkersSection& workers = deployment.decode_workers;
  if (static_cast<int>(gpus.size()) != workers.tensor_parallel_size) {
    return absl::InvalidArgumentError(absl::StrCat(deployment.source, ": decode_workers.tensor_parallel_size is ",
                                                   workers.tensor_parallel_size, " but the worker was given ",
                                                   gpus.size(), " GPU(s); they must match"));
  }
  const ModelDType dtype = deployment.model.dtype;
  if (dtype != ModelDType::kAuto && dtype != ModelDType::kBFloat16) {
    return absl::InvalidArgumentError(absl::StrCat(deployment.source, ": model.dtype ",
                                                   std::string(ModelDTypeName(dtype)),
                                                   " is not supported on the GPU, which keeps weights and KV cache in "
                                                   "bfloat16; set model.dtype to bfloat16 or auto"));
  }
  CudaModelRunnerOptions runner_options;
  runner_options.devices = gpus;
  runner_options.page_size = workers.kv_cache.page_size;
  if (workers.kv_cache.blocks.has_value()) {
    runner_options.num_kv_blocks = *workers.kv_cache.blocks;
  } else if (workers.kv_cache.memory_fraction.has_value()) {
    runner_options.kv_memory_fraction = *workers.kv_cache.memory_fraction;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        deployment.source, ": set decode_workers.kv_cache.blocks or decode_workers.kv_cache.memory_fraction"));
  }
  runner_options.max_batch_size = workers.max_batch_size;
  runner_options.max_batch_tokens = std::max(workers.max_prefill_tokens, workers.max_batch_size);
  runner_options.cuda_graphs = options.cuda_graphs;
  runner_options.per_sequence_policies = true;
  runner_options.default_sparse = deployment.sparse;

  if (deployment.model.random_weights.has_value()) {
    ASSIGN_OR_RETURN(ModelConfig config, RandomWeightPresetModelConfig(*deployment.model.random_weights));
    runner_options.max_seq_len = MaxSeqLen(options, config);
    ASSIGN_OR_RETURN(std::unique_ptr<CudaModelRunner> runner,
                     CudaModelRunner::CreateWithRandomWeights(config, options.random_weights_seed, runner_options));
    return std::unique_ptr<ModelRunner>(std::move(runner));
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(deployment.model.path));
  runner_options.max_seq_len = MaxSeqLen(options, config);
  ASSIGN_OR_RETURN(std::unique_ptr<CudaModelRunner> runner,
                   CudaModelRunner::CreateFromCheckpoint(deployment.model.path, runner_options));
  return std::unique_ptr<ModelRunner>(std::move(runner));
#else
  return absl::UnimplementedError(absl::StrCat(
      "GPU devices {", absl::StrJoin(gpus, ","),
      "} requested but this binary was built without CUDA; rebuild with -DASYNCSPADE_CUDA=ON on a machine with the "
      "CUDA toolkit, or serve with devices: cpu"));
#endif
}

}  // namespace

bool ModelRunnerFactoryHasCuda() {
#if ASYNCSPADE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::vector<int>> ParseRunnerDevices(const std::vector<std::string>& devices) {
  if (devices.empty()) return absl::InvalidArgumentError("no devices given; use cpu or GPU ordinals such as 0,1");
  if (devices.size() == 1 && devices[0] == "cpu") return std::vector<int>{};
  std::vector<int> gpus;
  for (const std::string& device : devices) {
    int ordinal = -1;
    if (device == "cpu" || !absl::SimpleAtoi(device, &ordinal) || ordinal < 0) {
      return absl::InvalidArgumentError(absl::StrCat("device '", device, "' in {", absl::StrJoin(devices, ","),
                                                     "}: give either cpu alone or GPU ordinals such as 0,1"));
    }
    if (std::find(gpus.begin(), gpus.end(), ordinal) != gpus.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("GPU ", ordinal, " is listed twice in {", absl::StrJoin(devices, ","), "}"));
    }
    gpus.push_back(ordinal);
  }
  return gpus;
}

absl::StatusOr<std::unique_ptr<ModelRunner>> CreateModelRunner(const DeploymentConfig& deployment,
                                                               const std::vector<std::string>& devices,
                                                               ModelRunnerFactoryOptions options) {
  ASSIGN_OR_RETURN(const std::vector<int> gpus, ParseRunnerDevices(devices));
  if (gpus.empty()) return CreateCpuRunner(deployment, std::move(options));
  return CreateCudaRunner(deployment, gpus, options);
}

absl::Status ReadCachedKeys(ModelRunner& runner, absl::Span<const int32_t> block_table, int layer, int32_t start,
                            int32_t num_tokens, float* out) {
#if ASYNCSPADE_WITH_CUDA
  if (auto* cuda = dynamic_cast<CudaModelRunner*>(&runner)) {
    return cuda->ReadKeys(block_table, layer, start, num_tokens, out);
  }
#endif
  auto* cpu = dynamic_cast<CpuModelRunner*>(&runner);
  if (cpu == nullptr)
    return absl::UnimplementedError("ReadCachedKeys: the runner is neither the CPU nor the CUDA runner");
  const kernels::PagedKvLayout& layout = runner.kv_layout();
  if (layer < 0 || layer >= runner.config().num_layers || start < 0 || num_tokens < 0 ||
      int64_t{start} + num_tokens > static_cast<int64_t>(block_table.size()) * layout.page_size) {
    return absl::InvalidArgumentError(absl::StrCat("ReadCachedKeys: layer ", layer, ", positions [", start, ", ",
                                                   int64_t{start} + num_tokens, ") outside the cache of a ",
                                                   block_table.size(), "-block sequence"));
  }
  const LayerKvCache cache = cpu->layer_kv_cache(layer);
  const size_t row = static_cast<size_t>(layout.head_dim);
  for (int32_t i = 0; i < num_tokens; ++i) {
    const int32_t position = start + i;
    const int block = block_table[position / layout.page_size];
    if (block < 0 || block >= layout.num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("ReadCachedKeys: block ", block, " outside the cache"));
    }
    for (int h = 0; h < layout.num_kv_heads; ++h) {
      std::memcpy(out + (static_cast<size_t>(i) * layout.num_kv_heads + h) * row,
                  cache.k + layout.Offset(block, h, position % layout.page_size), row * sizeof(float));
    }
  }
  return absl::OkStatus();
}

}  // namespace asyncspade
