// A deployment: the processes `asyncspade launch FILE.yaml` starts on one node (controller, decode
// workers, KV selectors), the GPUs each owns, the model they serve and the default sparse-attention
// policy. docs/configuration.md documents every key.
//
// Validation happens in two stages. Parsing checks everything the file alone determines (types,
// unknown keys, ranges, cross-field rules such as tensor_parallel_size == GPUs per replica) and
// reports every problem with its key path and line. What needs the model or the machine (the
// model's layer count, whether model.path exists, how many GPUs there are) is checked at launch by
// ResolveDeploymentForModel and the launcher.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/config/sparse_policy_config.h"
#include "common/model_config.h"

namespace asyncspade {

// The dtype the decode workers keep weights and KV cache in. kAuto: the checkpoint's torch_dtype on
// GPU, float32 on CPU.
enum class ModelDType { kAuto, kFloat32, kBFloat16, kFloat16 };
std::string_view ModelDTypeName(ModelDType dtype);  // "auto", "float32", "bfloat16", "float16"

// What the launcher does when a process exits unexpectedly.
enum class RestartPolicy { kNever, kOnFailure };
std::string_view RestartPolicyName(RestartPolicy policy);  // "never", "on-failure"

// Without max_seq_len, a deployment serves min(the model's max_position_embeddings, this).
inline constexpr int kDefaultMaxSeqLenCap = 32768;

struct ModelSection {
  // Absolute directory of the HF checkpoint (config.json, *.safetensors). Empty iff random_weights.
  std::string path;
  ModelDType dtype = ModelDType::kAuto;
  std::optional<int> max_seq_len;  // unset: see kDefaultMaxSeqLenCap
  // A preset from RandomWeightPresetNames(): the architecture of a real model with random weights,
  // for GPU benchmarks without a checkpoint.
  std::optional<std::string> random_weights;
  // Absolute directory with tokenizer.json. Defaults to `path`; empty when random_weights is used
  // without a tokenizer (requests must then send token ids).
  std::string tokenizer;
};

struct ControllerSection {
  std::string host = "127.0.0.1";
  int grpc_port = 0;  // 0: chosen by the OS at launch
  int http_port = 0;  // 0: chosen by the OS at launch
  // Unset: Prometheus metrics are served at /metrics on http_port. Set: on their own listener
  // (0 = chosen by the OS).
  std::optional<int> metrics_port;
};

// Where the replicas of one process kind run: all on the CPU, or each on its own list of GPUs.
struct DevicePlacement {
  bool cpu = true;
  std::vector<std::vector<int>> gpus_per_replica;  // empty when cpu

  bool operator==(const DevicePlacement&) const = default;
};

struct KvCacheSection {
  int page_size = 16;  // tokens per KV page
  // Exactly one of the two: a fixed page count, or a fraction of the GPU memory left free after
  // the weights are loaded (GPU only).
  std::optional<int64_t> blocks;
  std::optional<double> memory_fraction;
};

struct DecodeWorkersSection {
  int replicas = 1;
  DevicePlacement devices;
  int tensor_parallel_size = 1;   // == GPUs per replica (1 on CPU)
  int max_batch_size = 32;        // sequences decoded together per step
  int max_prefill_tokens = 4096;  // prompt tokens processed per step, over all sequences
  KvCacheSection kv_cache;
  RestartPolicy restart = RestartPolicy::kOnFailure;
  int max_restarts = 3;
};

// Model layers [first, last], both inclusive.
struct LayerRange {
  int first = 0;
  int last = 0;
  int size() const { return last - first + 1; }
  bool operator==(const LayerRange&) const = default;
};

struct SelectorsSection {
  int replicas = 0;
  DevicePlacement devices;
  // One range per replica; nullopt: `auto`, the layers split evenly (ResolveSelectorLayers). Every
  // selector serves its layers for every decode worker.
  std::optional<std::vector<LayerRange>> layers;
  RestartPolicy restart = RestartPolicy::kOnFailure;
  int max_restarts = 3;
};

struct LifecycleSection {
  int heartbeat_interval_ms = 500;
  int heartbeat_timeout_ms = 5000;  // a process silent this long is declared dead; > interval
  int drain_timeout_s = 30;         // how long a drain waits for running requests to finish
  int startup_timeout_s = 600;      // how long a process may take to load and register
};

struct DeploymentConfig {
  std::string source;  // where it was read from, for messages ("deploy/local.yaml")
  ModelSection model;
  ControllerSection controller;
  DecodeWorkersSection decode_workers;
  SelectorsSection selectors;
  SparsePolicyConfig sparse;  // the default; requests may override policy and budget
  LifecycleSection lifecycle;
};

// Reads and validates a deployment YAML. Relative paths in it resolve against the file's directory.
// Errors are NotFound (unreadable file) or InvalidArgument listing every problem as
// "<path>:<line>:<column>: <key.path>: <what is wrong and what is accepted>".
absl::StatusOr<DeploymentConfig> LoadDeploymentConfig(const std::string& path);

// The same from YAML text; relative paths resolve against `base_dir`. `source` names the text in
// messages (empty: messages say "line L, column C").
absl::StatusOr<DeploymentConfig> ParseDeploymentConfig(const std::string& yaml_text, const std::string& base_dir,
                                                       const std::string& source = "");

// deploy/local.yaml as it was when the binary was built, so that `asyncspade demo` works without
// the file. Its model path is relative: parse it with the repository's deploy/ directory as base_dir.
std::string_view EmbeddedLocalDeploymentYaml();

// The selectors' layer ranges for a model of `num_layers` layers, one per selector replica: the
// explicit `selectors.layers` (which must end exactly at the last layer) or, for `auto`, an even
// split (the first num_layers % replicas selectors get one layer more). Empty when there are no
// selectors.
absl::StatusOr<std::vector<LayerRange>> ResolveSelectorLayers(const DeploymentConfig& config, int num_layers);

// The checks that need the model, done at launch.
struct ResolvedDeployment {
  int max_seq_len = 0;
  std::vector<LayerRange> selector_layers;  // one per selector replica
};
// Checks `config` against the model it serves: model.path / model.tokenizer exist (unless random
// weights), max_seq_len fits the model's positions, tensor parallelism divides the heads, the KV
// cache holds at least one max_seq_len sequence (when sized in blocks), and resolves the selector
// layers. Errors name the key.
absl::StatusOr<ResolvedDeployment> ResolveDeploymentForModel(const DeploymentConfig& config, const ModelConfig& model);

}  // namespace asyncspade
