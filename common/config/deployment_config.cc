#include "common/config/deployment_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config/closest_name.h"
#include "common/config/random_weight_presets.h"
#include "common/config/yaml_reader.h"
#include "common/status.h"

namespace asyncspade {
namespace {

namespace fs = std::filesystem;

// Sanity bounds: they catch unit and sign mistakes, not real deployments.
constexpr int64_t kMaxTokens = int64_t{1} << 24;
constexpr int64_t kMaxReplicas = 1024;
constexpr int64_t kMaxGpuId = 1023;
constexpr int64_t kMaxRestarts = 1000;

const std::vector<std::string>& ModelDTypeNames() {
  static const std::vector<std::string> names = {"auto", "float32", "bfloat16", "float16"};
  return names;
}

const std::vector<std::string>& RestartPolicyNames() {
  static const std::vector<std::string> names = {"never", "on-failure"};
  return names;
}

template <typename Enum>
Enum EnumFromName(const std::vector<std::string>& names, const std::string& name) {
  return static_cast<Enum>(std::find(names.begin(), names.end(), name) - names.begin());
}

std::string RangeText(int64_t min, int64_t max) {
  if (max == std::numeric_limits<int32_t>::max()) return absl::StrCat(">= ", min);
  return absl::StrCat("in [", min, ", ", max, "]");
}

std::string LayerRangeText(const LayerRange& range) { return absl::StrCat("[", range.first, ", ", range.last, "]"); }

// Reads the YAML of a deployment into a DeploymentConfig, recording every problem in `issues`.
// Each section is read field by field; its cross-field rules run only when its fields were all
// readable, so that one typo does not cascade into misleading follow-up errors.
class DeploymentParser {
 public:
  DeploymentParser(fs::path base_dir, ConfigIssues* issues) : base_dir_(std::move(base_dir)), issues_(issues) {}

  void Parse(const YAML::Node& root, DeploymentConfig* config) {
    YamlMapping top(root, "", issues_);
    std::optional<YAML::Node> model = top.Get("model");
    std::optional<YAML::Node> controller = top.Get("controller");
    std::optional<YAML::Node> decode_workers = top.Get("decode_workers");
    std::optional<YAML::Node> selectors = top.Get("selectors");
    std::optional<YAML::Node> sparse = top.Get("sparse");
    std::optional<YAML::Node> lifecycle = top.Get("lifecycle");
    top.RejectUnknownKeys();
    // A misspelt section name would otherwise also surface as "section missing" follow-ups.
    const bool sections_ok = issues_->empty();

    if (!model.has_value()) {
      issues_->Add(top.mark(), "model",
                   "required section is missing: give model.path (a HF checkpoint directory) or "
                   "model.random_weights");
    }
    if (!decode_workers.has_value()) {
      issues_->Add(top.mark(), "decode_workers",
                   "required section is missing: it needs at least kv_cache.blocks (CPU or GPU) or "
                   "kv_cache.memory_fraction (GPU)");
    }
    const bool model_ok = model.has_value() && ParseModel(*model, &config->model);
    ParseController(controller.value_or(YAML::Node()), &config->controller);
    const bool workers_ok = decode_workers.has_value() && ParseDecodeWorkers(*decode_workers, &config->decode_workers);
    const bool sparse_ok = ParseSparse(sparse.value_or(YAML::Node()), &config->sparse);
    const bool selectors_ok = ParseSelectors(selectors.value_or(YAML::Node()), &config->selectors);
    ParseLifecycle(lifecycle.value_or(YAML::Node()), &config->lifecycle);

    if (!sections_ok) return;
    if (model_ok && workers_ok) CheckKvCapacity(*config);
    if (workers_ok && selectors_ok) CheckSelectorPlacement(*config);
    if (sparse_ok && selectors_ok && config->sparse.policy == SparsePolicy::kAsyncSpade &&
        config->selectors.replicas == 0) {
      if (selectors.has_value()) {
        issues_->Add("selectors.replicas",
                     "sparse.policy asyncspade needs at least one KV selector; set selectors.replicas >= 1 "
                     "or choose sparse.policy dense, quest or oracle (which select inside the decode worker)");
      } else {
        issues_->Add(sparse.has_value() ? "sparse.policy" : "selectors",
                     "sparse.policy is asyncspade (the default when unset), which needs at least one KV "
                     "selector, and there is no selectors section; add `selectors: {replicas: 1}` or choose "
                     "sparse.policy dense, quest "
                     "or oracle (which select inside the decode worker)");
      }
    }
  }

 private:
  // ---- field readers: on success store into *out and return true ----

  template <typename T>
  bool ReadInt(YamlMapping& map, const std::string& key, int64_t min, int64_t max, T* out, std::string_view hint = "") {
    std::optional<YAML::Node> node = map.Get(key);
    if (!node.has_value()) return false;
    std::optional<int64_t> value = ReadYamlInt(*node, map.KeyPath(key), issues_);
    if (!value.has_value()) return false;
    if (*value < min || *value > max) {
      issues_->Add(node->Mark(), map.KeyPath(key),
                   absl::StrCat("must be an integer ", RangeText(min, max), " (got ", *value, ")",
                                hint.empty() ? "" : "; ", std::string(hint)));
      return false;
    }
    *out = static_cast<T>(*value);
    return true;
  }

  template <typename T>
  bool ReadOptionalInt(YamlMapping& map, const std::string& key, int64_t min, int64_t max, std::optional<T>* out,
                       std::string_view hint = "") {
    T value{};
    if (!ReadInt(map, key, min, max, &value, hint)) return false;
    *out = value;
    return true;
  }

  bool ReadPath(YamlMapping& map, const std::string& key, std::string* out) {
    std::optional<YAML::Node> node = map.Get(key);
    if (!node.has_value()) return false;
    std::optional<std::string> text = ReadYamlString(*node, map.KeyPath(key), issues_);
    if (!text.has_value()) return false;
    if (text->empty()) {
      issues_->Add(node->Mark(), map.KeyPath(key), "must not be empty; remove the key to use the default");
      return false;
    }
    fs::path path(*text);
    if (path.is_relative()) path = base_dir_ / path;
    path = path.lexically_normal();
    if (!path.has_filename() && path.has_parent_path() && path != path.root_path()) path = path.parent_path();
    *out = path.string();
    return true;
  }

  template <typename Enum>
  bool ReadEnum(YamlMapping& map, const std::string& key, const std::vector<std::string>& names, Enum* out) {
    std::optional<YAML::Node> node = map.Get(key);
    if (!node.has_value()) return false;
    std::optional<std::string> choice = ReadYamlChoice(*node, map.KeyPath(key), names, issues_);
    if (!choice.has_value()) return false;
    *out = EnumFromName<Enum>(names, *choice);
    return true;
  }

  // `restart` and `max_restarts`, shared by decode workers and selectors.
  void ReadRestart(YamlMapping& map, RestartPolicy* policy, int* max_restarts) {
    ReadEnum(map, "restart", RestartPolicyNames(), policy);
    const bool max_given = ReadInt(map, "max_restarts", 0, kMaxRestarts, max_restarts);
    if (max_given && *policy == RestartPolicy::kNever) {
      issues_->Add(map.KeyPath("max_restarts"),
                   "has no effect with restart: never; remove it or set restart: on-failure");
    }
  }

  // `cpu`, or one list of GPU ids per replica: [[0], [1]] or [[0, 1]].
  bool ReadDevices(YamlMapping& map, const std::string& key, DevicePlacement* out) {
    std::optional<YAML::Node> node = map.Get(key);
    if (!node.has_value()) return false;
    const std::string path = map.KeyPath(key);
    constexpr const char* kForms =
        "write `cpu`, or one list of GPU ids per replica: [[0], [1]] for two replicas on one GPU each, "
        "[[0, 1]] for one replica on two GPUs";
    if (node->IsScalar()) {
      if (node->Scalar() == "cpu") {
        *out = DevicePlacement{};
        return true;
      }
      issues_->Add(node->Mark(), path, absl::StrCat("got ", DescribeYamlNode(*node), "; ", kForms));
      return false;
    }
    if (!node->IsSequence() || node->size() == 0) {
      issues_->Add(node->Mark(), path,
                   absl::StrCat("got ", node->IsSequence() ? "an empty list" : DescribeYamlNode(*node), "; ", kForms));
      return false;
    }
    bool all_scalars = true;
    for (size_t i = 0; i < node->size(); ++i) all_scalars = all_scalars && (*node)[i].IsScalar();
    if (all_scalars) {
      issues_->Add(node->Mark(), path, absl::StrCat("a flat list of GPU ids is ambiguous; ", kForms));
      return false;
    }
    DevicePlacement placement;
    placement.cpu = false;
    bool ok = true;
    for (size_t i = 0; i < node->size(); ++i) {
      const YAML::Node replica = (*node)[i];
      const std::string replica_path = IndexKeyPath(path, i);
      issues_->Remember(replica_path, replica.Mark());
      if (!replica.IsSequence() || replica.size() == 0) {
        issues_->Add(replica.Mark(), replica_path,
                     absl::StrCat("each replica needs a non-empty list of GPU ids, got ",
                                  replica.IsSequence() ? "an empty list" : DescribeYamlNode(replica), "; ", kForms));
        ok = false;
        continue;
      }
      std::vector<int> gpus;
      for (size_t j = 0; j < replica.size(); ++j) {
        const std::string gpu_path = IndexKeyPath(replica_path, j);
        std::optional<int64_t> gpu = ReadYamlInt(replica[j], gpu_path, issues_);
        if (!gpu.has_value()) {
          ok = false;
          continue;
        }
        if (*gpu < 0 || *gpu > kMaxGpuId) {
          issues_->Add(replica[j].Mark(), gpu_path,
                       absl::StrCat("GPU ids are CUDA device ordinals ", RangeText(0, kMaxGpuId), " (got ", *gpu, ")"));
          ok = false;
          continue;
        }
        if (std::find(gpus.begin(), gpus.end(), static_cast<int>(*gpu)) != gpus.end()) {
          issues_->Add(replica[j].Mark(), gpu_path, absl::StrCat("GPU ", *gpu, " is listed twice for this replica"));
          ok = false;
          continue;
        }
        gpus.push_back(static_cast<int>(*gpu));
      }
      placement.gpus_per_replica.push_back(std::move(gpus));
    }
    if (!ok) return false;
    *out = std::move(placement);
    return true;
  }

  // ---- sections: each returns whether it was read without problems ----

  bool ParseModel(const YAML::Node& node, ModelSection* model) {
    const size_t issues_before = issues_->issues().size();
    YamlMapping map(node, "model", issues_);
    const bool has_path = ReadPath(map, "path", &model->path);
    std::optional<YAML::Node> preset = map.Get("random_weights");
    if (preset.has_value()) {
      std::optional<std::string> name =
          ReadYamlChoice(*preset, map.KeyPath("random_weights"), RandomWeightPresetNames(), issues_);
      if (name.has_value()) model->random_weights = *name;
    }
    ReadEnum(map, "dtype", ModelDTypeNames(), &model->dtype);
    ReadOptionalInt(map, "max_seq_len", 1, kMaxTokens, &model->max_seq_len);
    const bool has_tokenizer = ReadPath(map, "tokenizer", &model->tokenizer);
    map.RejectUnknownKeys();

    if (map.Has("path") && preset.has_value()) {
      issues_->Add(map.KeyPath("random_weights"),
                   "give either model.path (a checkpoint) or model.random_weights (a preset architecture "
                   "with random weights), not both");
    } else if (!map.Has("path") && !preset.has_value()) {
      issues_->Add(map.KeyPath("path"),
                   absl::StrCat("required: the HF checkpoint directory (config.json + *.safetensors), "
                                "relative to this file or absolute; or set model.random_weights to one of ",
                                JoinAlternatives(RandomWeightPresetNames())));
    }
    if (has_path && !has_tokenizer) model->tokenizer = model->path;
    return issues_->issues().size() == issues_before;
  }

  bool ParseController(const YAML::Node& node, ControllerSection* controller) {
    const size_t issues_before = issues_->issues().size();
    YamlMapping map(node, "controller", issues_);
    if (std::optional<YAML::Node> host = map.Get("host"); host.has_value()) {
      std::optional<std::string> text = ReadYamlString(*host, map.KeyPath("host"), issues_);
      if (text.has_value() && text->empty()) {
        issues_->Add(host->Mark(), map.KeyPath("host"),
                     "must not be empty; use 127.0.0.1 (local) or 0.0.0.0 (all interfaces)");
      } else if (text.has_value()) {
        controller->host = *text;
      }
    }
    constexpr std::string_view kPortHint = "0 lets the OS choose a free port";
    ReadInt(map, "grpc_port", 0, 65535, &controller->grpc_port, kPortHint);
    ReadInt(map, "http_port", 0, 65535, &controller->http_port, kPortHint);
    ReadOptionalInt(map, "metrics_port", 0, 65535, &controller->metrics_port, kPortHint);
    map.RejectUnknownKeys();
    if (issues_->issues().size() != issues_before) return false;

    std::vector<std::pair<std::string, int>> ports = {{"grpc_port", controller->grpc_port},
                                                      {"http_port", controller->http_port}};
    if (controller->metrics_port.has_value()) ports.emplace_back("metrics_port", *controller->metrics_port);
    for (size_t i = 0; i < ports.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (ports[i].second != 0 && ports[i].second == ports[j].second) {
          issues_->Add(map.KeyPath(ports[i].first),
                       absl::StrCat("port ", ports[i].second, " is already controller.", ports[j].first,
                                    "; each listener needs its own port (or 0)"));
        }
      }
    }
    return issues_->issues().size() == issues_before;
  }

  bool ParseDecodeWorkers(const YAML::Node& node, DecodeWorkersSection* workers) {
    const size_t issues_before = issues_->issues().size();
    YamlMapping map(node, "decode_workers", issues_);
    ReadInt(map, "replicas", 1, kMaxReplicas, &workers->replicas);
    ReadDevices(map, "devices", &workers->devices);
    std::optional<int> tensor_parallel_size;
    ReadOptionalInt(map, "tensor_parallel_size", 1, 64, &tensor_parallel_size);
    ReadInt(map, "max_batch_size", 1, 65536, &workers->max_batch_size);
    ReadInt(map, "max_prefill_tokens", 1, kMaxTokens, &workers->max_prefill_tokens);
    std::optional<YAML::Node> kv_node = map.Get("kv_cache");
    YamlMapping kv(kv_node.value_or(YAML::Node()), map.KeyPath("kv_cache"), issues_);
    ReadInt(kv, "page_size", 1, 1024, &workers->kv_cache.page_size);
    ReadOptionalInt(kv, "blocks", 1, int64_t{1} << 40, &workers->kv_cache.blocks);
    if (std::optional<YAML::Node> fraction = kv.Get("memory_fraction"); fraction.has_value()) {
      std::optional<double> value = ReadYamlNumber(*fraction, kv.KeyPath("memory_fraction"), issues_);
      if (value.has_value() && (*value <= 0 || *value > 1)) {
        issues_->Add(fraction->Mark(), kv.KeyPath("memory_fraction"),
                     absl::StrCat("must be in (0, 1], the fraction of GPU memory left free after loading the "
                                  "weights (got ",
                                  *value, ")"));
      } else if (value.has_value()) {
        workers->kv_cache.memory_fraction = *value;
      }
    }
    kv.RejectUnknownKeys();
    ReadRestart(map, &workers->restart, &workers->max_restarts);
    map.RejectUnknownKeys();
    if (issues_->issues().size() != issues_before) return false;

    // Exactly one way to size the KV cache.
    const bool has_blocks = workers->kv_cache.blocks.has_value();
    const bool has_fraction = workers->kv_cache.memory_fraction.has_value();
    if (has_blocks && has_fraction) {
      issues_->Add(kv.KeyPath("memory_fraction"),
                   "set exactly one of decode_workers.kv_cache.blocks and decode_workers.kv_cache.memory_fraction, "
                   "not both");
    } else if (!has_blocks && !has_fraction) {
      issues_->Add(kv.path(),
                   "set exactly one of blocks (a fixed number of KV pages) or memory_fraction (a fraction of "
                   "free GPU memory, GPU only)");
    } else if (has_fraction && workers->devices.cpu) {
      issues_->Add(kv.KeyPath("memory_fraction"),
                   "is for GPU decode workers only; on CPU size the cache with decode_workers.kv_cache.blocks");
    }

    if (workers->devices.cpu) {
      if (tensor_parallel_size.value_or(1) != 1) {
        issues_->Add(map.KeyPath("tensor_parallel_size"),
                     absl::StrCat("is ", *tensor_parallel_size,
                                  " but decode workers run on the CPU; tensor parallelism needs GPUs "
                                  "(devices: [[0, 1]] for TP 2)"));
      }
      workers->tensor_parallel_size = 1;
    } else {
      const auto& gpus = workers->devices.gpus_per_replica;
      if (static_cast<int>(gpus.size()) != workers->replicas) {
        issues_->Add(map.KeyPath("devices"),
                     absl::StrCat("lists GPUs for ", gpus.size(), " replica(s) but decode_workers.replicas is ",
                                  workers->replicas, "; give one GPU list per replica"));
      }
      const int tp = tensor_parallel_size.value_or(static_cast<int>(gpus.front().size()));
      for (size_t i = 0; i < gpus.size(); ++i) {
        if (static_cast<int>(gpus[i].size()) == tp) continue;
        if (tensor_parallel_size.has_value()) {
          issues_->Add(map.KeyPath("tensor_parallel_size"),
                       absl::StrCat("is ", tp, " but decode_workers.devices[", i, "] lists ", gpus[i].size(),
                                    " GPU(s); every replica spans exactly tensor_parallel_size GPUs"));
        } else {
          issues_->Add(IndexKeyPath(map.KeyPath("devices"), i),
                       absl::StrCat("lists ", gpus[i].size(), " GPU(s) but decode_workers.devices[0] lists ", tp,
                                    "; every replica spans the same number of GPUs (its tensor_parallel_size)"));
        }
        break;
      }
      workers->tensor_parallel_size = tp;
      std::set<int> taken;
      for (size_t i = 0; i < gpus.size(); ++i) {
        for (int gpu : gpus[i]) {
          if (!taken.insert(gpu).second) {
            issues_->Add(IndexKeyPath(map.KeyPath("devices"), i),
                         absl::StrCat("GPU ", gpu,
                                      " is already used by another decode worker; each decode worker "
                                      "owns its GPUs"));
          }
        }
      }
    }
    return issues_->issues().size() == issues_before;
  }

  bool ParseSelectors(const YAML::Node& node, SelectorsSection* selectors) {
    const size_t issues_before = issues_->issues().size();
    YamlMapping map(node, "selectors", issues_);
    ReadInt(map, "replicas", 0, kMaxReplicas, &selectors->replicas);
    devices_given_ = ReadDevices(map, "devices", &selectors->devices);
    if (std::optional<YAML::Node> layers = map.Get("layers"); layers.has_value()) {
      ReadLayers(*layers, map.KeyPath("layers"), selectors);
    }
    ReadRestart(map, &selectors->restart, &selectors->max_restarts);
    map.RejectUnknownKeys();
    if (issues_->issues().size() != issues_before) return false;

    if (!selectors->devices.cpu) {
      const auto& gpus = selectors->devices.gpus_per_replica;
      if (static_cast<int>(gpus.size()) != selectors->replicas) {
        issues_->Add(map.KeyPath("devices"),
                     absl::StrCat("lists GPUs for ", gpus.size(), " selector(s) but selectors.replicas is ",
                                  selectors->replicas, "; give one GPU list per selector"));
      }
      for (size_t i = 0; i < gpus.size(); ++i) {
        if (gpus[i].size() != 1) {
          issues_->Add(IndexKeyPath(map.KeyPath("devices"), i),
                       absl::StrCat("lists ", gpus[i].size(), " GPUs; a KV selector runs on exactly one GPU, e.g. [",
                                    gpus[i].front(), "]"));
        }
      }
    }
    if (selectors->layers.has_value()) {
      CheckExplicitLayers(*selectors->layers, selectors->replicas, map.KeyPath("layers"));
    }
    return issues_->issues().size() == issues_before;
  }

  // `auto`, or one [first, last] per selector.
  void ReadLayers(const YAML::Node& node, const std::string& path, SelectorsSection* selectors) {
    constexpr const char* kForms =
        "write `auto` (split evenly) or one [first, last] layer range per selector, e.g. [[0, 13], [14, 27]]";
    if (node.IsScalar()) {
      if (node.Scalar() != "auto")
        issues_->Add(node.Mark(), path, absl::StrCat("got ", DescribeYamlNode(node), "; ", kForms));
      return;  // auto
    }
    if (!node.IsSequence()) {
      issues_->Add(node.Mark(), path, absl::StrCat("got ", DescribeYamlNode(node), "; ", kForms));
      return;
    }
    std::vector<LayerRange> ranges;
    for (size_t i = 0; i < node.size(); ++i) {
      const YAML::Node entry = node[i];
      const std::string entry_path = IndexKeyPath(path, i);
      issues_->Remember(entry_path, entry.Mark());
      if (!entry.IsSequence() || entry.size() != 2) {
        issues_->Add(entry.Mark(), entry_path,
                     absl::StrCat("expected a [first, last] layer range, got ", DescribeYamlNode(entry), "; ", kForms));
        continue;
      }
      std::optional<int64_t> first = ReadYamlInt(entry[0], IndexKeyPath(entry_path, 0), issues_);
      std::optional<int64_t> last = ReadYamlInt(entry[1], IndexKeyPath(entry_path, 1), issues_);
      if (!first.has_value() || !last.has_value()) continue;
      if (*first < 0 || *last < *first || *last >= kMaxTokens) {
        issues_->Add(entry.Mark(), entry_path,
                     absl::StrCat("[", *first, ", ", *last,
                                  "] is not a layer range; it needs 0 <= first <= last (both inclusive)"));
        continue;
      }
      ranges.push_back({static_cast<int>(*first), static_cast<int>(*last)});
    }
    selectors->layers = std::move(ranges);
  }

  // What can be checked without the model: one range per selector, no overlap, no gap, from layer
  // 0. That the last range ends at the model's last layer is checked by ResolveSelectorLayers.
  void CheckExplicitLayers(const std::vector<LayerRange>& ranges, int replicas, const std::string& path) {
    if (static_cast<int>(ranges.size()) != replicas) {
      issues_->Add(path, absl::StrCat("lists ", ranges.size(), " layer range(s) but selectors.replicas is ", replicas,
                                      "; give one [first, last] range per selector, or `auto`"));
      return;
    }
    std::vector<size_t> order(ranges.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a].first < ranges[b].first; });
    int next = 0;  // first layer not yet covered
    for (size_t k = 0; k < order.size(); ++k) {
      const LayerRange& range = ranges[order[k]];
      if (range.first < next) {
        const size_t previous = order[k - 1];
        issues_->Add(
            IndexKeyPath(path, order[k]),
            absl::StrCat(LayerRangeText(range), " overlaps selectors.layers[", previous, "] ",
                         LayerRangeText(ranges[previous]), "; every layer must be served by exactly one selector"));
      } else if (range.first > next) {
        issues_->Add(IndexKeyPath(path, order[k]),
                     absl::StrCat("no selector serves layer(s) ", next, "..", range.first - 1,
                                  "; the ranges must cover every layer exactly once, starting at 0"));
      }
      next = std::max(next, range.last + 1);
    }
  }

  bool ParseSparse(const YAML::Node& node, SparsePolicyConfig* sparse) {
    const size_t issues_before = issues_->issues().size();
    YamlMapping map(node, "sparse", issues_);
    ReadEnum(map, "policy", SparsePolicyNames(), &sparse->policy);
    // Type and sign checks here; the rules between fields are SparsePolicyConfig's own.
    constexpr int64_t kIntMin = std::numeric_limits<int32_t>::min();
    constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
    ReadInt(map, "budget", kIntMin, kIntMax, &sparse->budget);
    ReadInt(map, "sinks", kIntMin, kIntMax, &sparse->sinks);
    ReadInt(map, "recent", kIntMin, kIntMax, &sparse->recent);
    ReadInt(map, "quest_page_size", kIntMin, kIntMax, &sparse->quest_page_size);
    ReadOptionalInt(map, "min_context_for_sparse", kIntMin, kIntMax, &sparse->min_context_for_sparse);
    ReadEnum(map, "aggregation", ScoreAggregationNames(), &sparse->aggregation);
    if (std::optional<YAML::Node> value = map.Get("dense_below_threshold"); value.has_value()) {
      static const std::vector<std::string> kBooleans = {"true", "false"};
      std::optional<std::string> text =
          ReadYamlChoice(*value, map.KeyPath("dense_below_threshold"), kBooleans, issues_);
      if (text.has_value()) sparse->dense_below_threshold = *text == "true";
    }
    std::optional<YAML::Node> predictor_node = map.Get("predictor");
    YamlMapping predictor(predictor_node.value_or(YAML::Node()), map.KeyPath("predictor"), issues_);
    ReadInt(predictor, "window", kIntMin, kIntMax, &sparse->predictor.window);
    ReadInt(predictor, "lags", kIntMin, kIntMax, &sparse->predictor.lags);
    if (std::optional<YAML::Node> epsilon = predictor.Get("ridge_epsilon"); epsilon.has_value()) {
      std::optional<double> value = ReadYamlNumber(*epsilon, predictor.KeyPath("ridge_epsilon"), issues_);
      if (value.has_value()) sparse->predictor.ridge_epsilon = *value;
    }
    ReadEnum(predictor, "mode", QueryPredictorModeNames(), &sparse->predictor.mode);
    ReadEnum(predictor, "rope", QueryPredictorRopeNames(), &sparse->predictor.rope);
    predictor.RejectUnknownKeys();
    map.RejectUnknownKeys();
    if (issues_->issues().size() != issues_before) return false;
    for (const SparseConfigError& error : sparse->Errors()) {
      issues_->Add(JoinKeyPath("sparse", error.field), error.message);
    }
    return issues_->issues().size() == issues_before;
  }

  void ParseLifecycle(const YAML::Node& node, LifecycleSection* lifecycle) {
    const size_t issues_before = issues_->issues().size();
    YamlMapping map(node, "lifecycle", issues_);
    ReadInt(map, "heartbeat_interval_ms", 1, 600000, &lifecycle->heartbeat_interval_ms);
    ReadInt(map, "heartbeat_timeout_ms", 1, 3600000, &lifecycle->heartbeat_timeout_ms);
    ReadInt(map, "drain_timeout_s", 0, 86400, &lifecycle->drain_timeout_s, "0 cancels running requests at once");
    ReadInt(map, "startup_timeout_s", 1, 86400, &lifecycle->startup_timeout_s);
    map.RejectUnknownKeys();
    if (issues_->issues().size() != issues_before) return;
    if (lifecycle->heartbeat_timeout_ms <= lifecycle->heartbeat_interval_ms) {
      issues_->Add(map.KeyPath("heartbeat_timeout_ms"),
                   absl::StrCat("must be greater than lifecycle.heartbeat_interval_ms = ",
                                lifecycle->heartbeat_interval_ms, " (got ", lifecycle->heartbeat_timeout_ms,
                                "); otherwise a healthy process is declared dead between two heartbeats. "
                                "Several intervals is usual"));
    }
  }

  // ---- rules across sections ----

  void CheckKvCapacity(const DeploymentConfig& config) {
    const KvCacheSection& kv = config.decode_workers.kv_cache;
    if (!kv.blocks.has_value() || !config.model.max_seq_len.has_value()) return;
    const int64_t tokens = *kv.blocks * kv.page_size;
    if (tokens < *config.model.max_seq_len) {
      issues_->Add(
          "decode_workers.kv_cache.blocks",
          absl::StrCat(*kv.blocks, " pages of ", kv.page_size, " tokens hold ", tokens,
                       " tokens, fewer than one sequence of model.max_seq_len = ", *config.model.max_seq_len,
                       "; raise blocks to at least ", (*config.model.max_seq_len + kv.page_size - 1) / kv.page_size,
                       " or lower model.max_seq_len"));
    }
  }

  void CheckSelectorPlacement(const DeploymentConfig& config) {
    const SelectorsSection& selectors = config.selectors;
    const bool workers_on_cpu = config.decode_workers.devices.cpu;
    if (selectors.replicas == 0) return;
    if (!devices_given_) {
      if (workers_on_cpu) return;  // selectors follow the decode workers onto the CPU
      issues_->Add("selectors.devices",
                   "required when decode workers run on GPUs: one GPU per selector, e.g. [[1]] or [[4], [5]]");
      return;
    }
    if (selectors.devices.cpu != workers_on_cpu) {
      issues_->Add("selectors.devices",
                   absl::StrCat("selectors run on ", selectors.devices.cpu ? "the CPU" : "GPUs",
                                " but decode workers on ", workers_on_cpu ? "the CPU" : "GPUs",
                                "; both must be on GPUs (data plane over NCCL) or both on the CPU (over Gloo/TCP)"));
    }
  }

  fs::path base_dir_;
  ConfigIssues* issues_;
  bool devices_given_ = false;  // selectors.devices was written
};

absl::StatusOr<std::vector<YAML::Node>> LoadYamlDocuments(const std::string& yaml_text, const std::string& source) {
  const std::string where = source.empty() ? std::string() : source + ":";
  try {
    return YAML::LoadAll(yaml_text);
  } catch (const YAML::Exception& e) {
    const std::string position =
        e.mark.is_null()
            ? where
            : (source.empty() ? absl::StrCat("line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ")
                              : absl::StrCat(where, e.mark.line + 1, ":", e.mark.column + 1, ": "));
    return absl::InvalidArgumentError(
        absl::StrCat(position, "YAML syntax error: ", e.msg, "; fix the YAML at that position"));
  }
}

}  // namespace

std::string_view ModelDTypeName(ModelDType dtype) { return ModelDTypeNames()[static_cast<size_t>(dtype)]; }

std::string_view RestartPolicyName(RestartPolicy policy) { return RestartPolicyNames()[static_cast<size_t>(policy)]; }

absl::StatusOr<DeploymentConfig> ParseDeploymentConfig(const std::string& yaml_text, const std::string& base_dir,
                                                       const std::string& source) {
  ASSIGN_OR_RETURN(std::vector<YAML::Node> documents, LoadYamlDocuments(yaml_text, source));
  const std::string where = source.empty() ? std::string("the deployment config") : source;
  if (documents.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(where, " holds ", documents.size(),
                                                   " YAML documents (separated by ---); a deployment is one document"));
  }
  if (documents.empty() || documents[0].IsNull()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where,
                     " is empty; a deployment needs at least the sections model and decode_workers "
                     "(see deploy/local.yaml and docs/configuration.md)"));
  }
  if (!documents[0].IsMap()) {
    ConfigIssues issues;
    issues.Add(documents[0].Mark(), "",
               absl::StrCat("the top level must be a mapping of sections (model, controller, decode_workers, "
                            "selectors, sparse, lifecycle), got ",
                            DescribeYamlNode(documents[0])));
    return issues.ToStatus(source);
  }
  std::error_code error;
  fs::path base = fs::absolute(base_dir.empty() ? fs::path(".") : fs::path(base_dir), error);
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve the base directory '", base_dir, "' of ", where, ": ", error.message()));
  }

  DeploymentConfig config;
  config.source = source;
  ConfigIssues issues;
  try {
    DeploymentParser(base.lexically_normal(), &issues).Parse(documents[0], &config);
  } catch (const YAML::Exception& e) {  // yaml-cpp accessors throw on malformed nodes
    issues.Add(e.mark, "", absl::StrCat("unreadable YAML: ", e.msg));
  }
  RETURN_IF_ERROR(issues.ToStatus(source));
  return config;
}

absl::StatusOr<DeploymentConfig> LoadDeploymentConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code error;
    const bool exists = fs::exists(path, error);
    return absl::NotFoundError(absl::StrCat("cannot read deployment config '", path,
                                            "': ", exists ? "permission denied or not a file" : "no such file",
                                            "; pass the path of a deployment YAML, e.g. deploy/local.yaml"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  std::error_code error;
  fs::path absolute = fs::absolute(fs::path(path), error);
  if (error) absolute = fs::path(path);
  return ParseDeploymentConfig(text.str(), absolute.parent_path().string(), path);
}

absl::StatusOr<std::vector<LayerRange>> ResolveSelectorLayers(const DeploymentConfig& config, int num_layers) {
  const SelectorsSection& selectors = config.selectors;
  if (num_layers < 1) {
    return absl::InvalidArgumentError(absl::StrCat("the model has ", num_layers, " layers; cannot assign selectors"));
  }
  if (selectors.replicas == 0) return std::vector<LayerRange>{};
  if (!selectors.layers.has_value()) {
    if (selectors.replicas > num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("selectors.replicas: ", selectors.replicas, " selectors for a model of ", num_layers,
                       " layers; each selector needs at least one layer, so use at most ", num_layers));
    }
    std::vector<LayerRange> ranges;
    const int base = num_layers / selectors.replicas;
    const int extra = num_layers % selectors.replicas;
    int first = 0;
    for (int i = 0; i < selectors.replicas; ++i) {
      const int size = base + (i < extra ? 1 : 0);
      ranges.push_back({first, first + size - 1});
      first += size;
    }
    return ranges;
  }

  // Explicit ranges: parsing already checked one per replica, no overlap and no gap from layer 0;
  // re-check here too because a config can be built in code.
  const std::vector<LayerRange>& ranges = *selectors.layers;
  if (static_cast<int>(ranges.size()) != selectors.replicas) {
    return absl::InvalidArgumentError(absl::StrCat("selectors.layers: lists ", ranges.size(),
                                                   " ranges but selectors.replicas is ", selectors.replicas));
  }
  std::vector<int> served_by(num_layers, -1);
  for (size_t i = 0; i < ranges.size(); ++i) {
    const LayerRange& range = ranges[i];
    if (range.first < 0 || range.last < range.first || range.last >= num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("selectors.layers[", i, "]: ", LayerRangeText(range),
                                                     " is outside the model's layers [0, ", num_layers - 1, "] (",
                                                     num_layers, " layers)"));
    }
    for (int layer = range.first; layer <= range.last; ++layer) {
      if (served_by[layer] >= 0) {
        return absl::InvalidArgumentError(absl::StrCat("selectors.layers[", i, "]: layer ", layer,
                                                       " is also served by selectors.layers[", served_by[layer],
                                                       "]; every layer must be served by exactly one selector"));
      }
      served_by[layer] = static_cast<int>(i);
    }
  }
  for (int layer = 0; layer < num_layers; ++layer) {
    if (served_by[layer] >= 0) continue;
    int last = layer;
    while (last + 1 < num_layers && served_by[last + 1] < 0) ++last;
    return absl::InvalidArgumentError(absl::StrCat("selectors.layers: no selector serves layer(s) ", layer, "..", last,
                                                   " of the model's ", num_layers,
                                                   " layers; the ranges must cover every layer exactly once"));
  }
  return ranges;
}

absl::StatusOr<ResolvedDeployment> ResolveDeploymentForModel(const DeploymentConfig& config, const ModelConfig& model) {
  const std::string where = config.source.empty() ? std::string("deployment config") : config.source;
  auto fail = [&where](const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", message));
  };
  std::error_code error;
  if (!config.model.random_weights.has_value() && !fs::is_directory(config.model.path, error)) {
    return absl::NotFoundError(absl::StrCat(where, ": model.path: '", config.model.path,
                                            "' is not a directory; point it at a HF checkpoint directory "
                                            "(config.json + *.safetensors)"));
  }
  if (!config.model.tokenizer.empty() && !fs::exists(config.model.tokenizer, error)) {
    return absl::NotFoundError(absl::StrCat(where, ": model.tokenizer: '", config.model.tokenizer,
                                            "' does not exist; point it at a directory holding tokenizer.json"));
  }

  ResolvedDeployment resolved;
  if (model.max_position_embeddings < 1) {
    return fail(absl::StrCat("the model declares max_position_embeddings = ", model.max_position_embeddings));
  }
  if (config.model.max_seq_len.has_value()) {
    if (*config.model.max_seq_len > model.max_position_embeddings) {
      return fail(absl::StrCat("model.max_seq_len: ", *config.model.max_seq_len, " exceeds the model's ",
                               model.max_position_embeddings,
                               " positions (max_position_embeddings); lower it or remove it"));
    }
    resolved.max_seq_len = *config.model.max_seq_len;
  } else {
    resolved.max_seq_len = std::min(model.max_position_embeddings, kDefaultMaxSeqLenCap);
  }

  const int tp = config.decode_workers.tensor_parallel_size;
  if (model.num_heads % tp != 0 || model.num_kv_heads % tp != 0) {
    return fail(absl::StrCat("decode_workers.tensor_parallel_size: ", tp, " does not divide the model's ",
                             model.num_heads, " attention heads and ", model.num_kv_heads,
                             " KV heads; use a common divisor"));
  }

  const KvCacheSection& kv = config.decode_workers.kv_cache;
  if (kv.blocks.has_value() && *kv.blocks * kv.page_size < resolved.max_seq_len) {
    return fail(absl::StrCat("decode_workers.kv_cache.blocks: ", *kv.blocks, " pages of ", kv.page_size,
                             " tokens cannot hold one sequence of ", resolved.max_seq_len,
                             " tokens (max_seq_len); raise blocks to at least ",
                             (resolved.max_seq_len + kv.page_size - 1) / kv.page_size, " or set model.max_seq_len"));
  }

  absl::StatusOr<std::vector<LayerRange>> layers = ResolveSelectorLayers(config, model.num_layers);
  if (!layers.ok()) return Annotate(layers.status(), where);
  resolved.selector_layers = *std::move(layers);
  return resolved;
}

}  // namespace asyncspade
