#include "common/config/deployment_config.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asyncspade {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path SourceDir() {
  const char* env = std::getenv("ASYNCSPADE_SOURCE_DIR");
  return fs::path(env != nullptr ? env : ASYNCSPADE_SOURCE_DIR);
}

fs::path DeployDir() { return SourceDir() / "deploy"; }
fs::path FixtureDir() { return SourceDir() / "tests" / "fixtures" / "config"; }

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A valid CPU deployment that the tests below edit one key at a time.
constexpr const char* kMinimalYaml = R"(
model:
  path: ../models/tiny
decode_workers:
  kv_cache:
    blocks: 64
sparse:
  policy: dense
)";

// ---------------------------------------------------------------------------------------------
// Shipped files
// ---------------------------------------------------------------------------------------------

TEST(DeploymentConfigTest, EveryShippedDeployFileLoads) {
  ASSERT_TRUE(fs::is_directory(DeployDir())) << DeployDir();
  int loaded = 0;
  for (const auto& entry : fs::directory_iterator(DeployDir())) {
    if (entry.path().extension() != ".yaml") continue;
    absl::StatusOr<DeploymentConfig> config = LoadDeploymentConfig(entry.path().string());
    EXPECT_TRUE(config.ok()) << entry.path() << ": " << config.status();
    ++loaded;
  }
  // local, h200, h200x2, 8xa100-qwen3-8b, 8xa100-qwen3-32b
  EXPECT_GE(loaded, 5);
}

TEST(DeploymentConfigTest, LocalYamlIsTheCpuDemo) {
  absl::StatusOr<DeploymentConfig> config = LoadDeploymentConfig((DeployDir() / "local.yaml").string());
  ASSERT_TRUE(config.ok()) << config.status();
  // The relative model path resolves against deploy/, i.e. <repo>/models/...
  EXPECT_EQ(fs::path(config->model.path), (SourceDir() / "models" / "SmolLM2-135M-Instruct").lexically_normal());
  EXPECT_EQ(config->model.tokenizer, config->model.path);
  EXPECT_FALSE(config->model.random_weights.has_value());
  EXPECT_TRUE(config->decode_workers.devices.cpu);
  EXPECT_EQ(config->decode_workers.replicas, 1);
  EXPECT_EQ(config->decode_workers.tensor_parallel_size, 1);
  EXPECT_TRUE(config->decode_workers.kv_cache.blocks.has_value());
  EXPECT_FALSE(config->decode_workers.kv_cache.memory_fraction.has_value());
  EXPECT_EQ(config->selectors.replicas, 2);
  EXPECT_TRUE(config->selectors.devices.cpu);
  EXPECT_FALSE(config->selectors.layers.has_value());  // auto
  EXPECT_EQ(config->sparse.policy, SparsePolicy::kAsyncSpade);
  EXPECT_EQ(config->sparse.budget, 64);
  EXPECT_EQ(config->sparse.sinks, 4);
  EXPECT_EQ(config->sparse.recent, 32);
  EXPECT_EQ(config->controller.grpc_port, 0);
  EXPECT_EQ(config->controller.http_port, 0);
  EXPECT_FALSE(config->controller.metrics_port.has_value());

  // SmolLM2-135M has 30 layers: two selectors split them evenly.
  absl::StatusOr<std::vector<LayerRange>> layers = ResolveSelectorLayers(*config, 30);
  ASSERT_TRUE(layers.ok()) << layers.status();
  EXPECT_EQ(*layers, (std::vector<LayerRange>{{0, 14}, {15, 29}}));
}

TEST(DeploymentConfigTest, GpuDeploymentsPlaceProcessesAsDocumented) {
  absl::StatusOr<DeploymentConfig> x2 = LoadDeploymentConfig((DeployDir() / "h200x2.yaml").string());
  ASSERT_TRUE(x2.ok()) << x2.status();
  EXPECT_EQ(x2->model.random_weights, "qwen3-8b");
  EXPECT_TRUE(x2->model.path.empty());
  EXPECT_EQ(x2->decode_workers.devices.gpus_per_replica, (std::vector<std::vector<int>>{{0}}));
  EXPECT_EQ(x2->selectors.devices.gpus_per_replica, (std::vector<std::vector<int>>{{1}}));

  absl::StatusOr<DeploymentConfig> a8 = LoadDeploymentConfig((DeployDir() / "8xa100-qwen3-8b.yaml").string());
  ASSERT_TRUE(a8.ok()) << a8.status();
  EXPECT_EQ(a8->decode_workers.replicas, 4);
  EXPECT_EQ(a8->selectors.replicas, 4);
  EXPECT_EQ(a8->sparse.budget, 2048);
  absl::StatusOr<std::vector<LayerRange>> layers8 = ResolveSelectorLayers(*a8, 36);  // Qwen3-8B
  ASSERT_TRUE(layers8.ok()) << layers8.status();
  EXPECT_EQ(*layers8, (std::vector<LayerRange>{{0, 8}, {9, 17}, {18, 26}, {27, 35}}));

  absl::StatusOr<DeploymentConfig> a32 = LoadDeploymentConfig((DeployDir() / "8xa100-qwen3-32b.yaml").string());
  ASSERT_TRUE(a32.ok()) << a32.status();
  EXPECT_EQ(a32->decode_workers.tensor_parallel_size, 2);
  EXPECT_EQ(a32->decode_workers.devices.gpus_per_replica, (std::vector<std::vector<int>>{{0, 1}, {2, 3}}));
  absl::StatusOr<std::vector<LayerRange>> layers32 = ResolveSelectorLayers(*a32, 64);  // Qwen3-32B
  ASSERT_TRUE(layers32.ok()) << layers32.status();
  EXPECT_EQ(layers32->size(), 4u);
  EXPECT_EQ(layers32->back(), (LayerRange{48, 63}));
  // The same file against a model with fewer layers must be refused at launch.
  EXPECT_THAT(ResolveSelectorLayers(*a32, 36).status().message(), HasSubstr("selectors.layers"));
}

TEST(DeploymentConfigTest, EmbeddedDefaultIsLocalYaml) {
  const std::string on_disk = ReadFile(DeployDir() / "local.yaml");
  ASSERT_FALSE(on_disk.empty());
  EXPECT_EQ(std::string(EmbeddedLocalDeploymentYaml()), on_disk)
      << "deploy/local.yaml changed since the build; re-run cmake";

  absl::StatusOr<DeploymentConfig> embedded =
      ParseDeploymentConfig(std::string(EmbeddedLocalDeploymentYaml()), DeployDir().string(), "<embedded>");
  ASSERT_TRUE(embedded.ok()) << embedded.status();
  absl::StatusOr<DeploymentConfig> loaded = LoadDeploymentConfig((DeployDir() / "local.yaml").string());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(embedded->model.path, loaded->model.path);
  EXPECT_EQ(embedded->selectors.replicas, loaded->selectors.replicas);
  EXPECT_EQ(embedded->sparse.budget, loaded->sparse.budget);
}

// ---------------------------------------------------------------------------------------------
// Parsing rules
// ---------------------------------------------------------------------------------------------

TEST(DeploymentConfigTest, MinimalConfigGetsDocumentedDefaults) {
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(kMinimalYaml, "/srv/deploy");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model.path, "/srv/models/tiny");
  EXPECT_EQ(config->model.tokenizer, "/srv/models/tiny");
  EXPECT_EQ(config->model.dtype, ModelDType::kAuto);
  EXPECT_FALSE(config->model.max_seq_len.has_value());
  EXPECT_EQ(config->controller.host, "127.0.0.1");
  EXPECT_EQ(config->decode_workers.replicas, 1);
  EXPECT_TRUE(config->decode_workers.devices.cpu);
  EXPECT_EQ(config->decode_workers.kv_cache.page_size, 16);
  EXPECT_EQ(config->decode_workers.restart, RestartPolicy::kOnFailure);
  EXPECT_EQ(config->selectors.replicas, 0);
  EXPECT_EQ(config->sparse.quest_page_size, 16);
  EXPECT_EQ(config->sparse.predictor.window, 16);
  EXPECT_EQ(config->sparse.predictor.lags, 4);
  EXPECT_DOUBLE_EQ(config->sparse.predictor.ridge_epsilon, 1e-3);
  EXPECT_EQ(config->sparse.predictor.mode, QueryPredictorMode::kRidgeShared);
  EXPECT_EQ(config->sparse.predictor.rope, QueryPredictorRope::kPre);
  EXPECT_EQ(config->sparse.aggregation, ScoreAggregation::kSoftmaxSum);
  EXPECT_GT(config->lifecycle.heartbeat_timeout_ms, config->lifecycle.heartbeat_interval_ms);
}

TEST(DeploymentConfigTest, PathsResolveAgainstTheBaseDirectory) {
  const std::string yaml = R"(
model:
  path: /abs/checkpoint/
  tokenizer: tok/./qwen3
decode_workers: {kv_cache: {blocks: 8}}
sparse: {policy: dense}
)";
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/etc/asyncspade");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model.path, "/abs/checkpoint");
  EXPECT_EQ(config->model.tokenizer, "/etc/asyncspade/tok/qwen3");
}

TEST(DeploymentConfigTest, LoadResolvesPathsAgainstTheFilesDirectory) {
  const fs::path dir = fs::path(::testing::TempDir()) / "deployment_config_test_load";
  fs::create_directories(dir / "conf");
  {
    std::ofstream out(dir / "conf" / "d.yaml");
    out << kMinimalYaml;
  }
  absl::StatusOr<DeploymentConfig> config = LoadDeploymentConfig((dir / "conf" / "d.yaml").string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(fs::path(config->model.path), (fs::absolute(dir) / "models" / "tiny").lexically_normal());
  EXPECT_EQ(config->source, (dir / "conf" / "d.yaml").string());
}

TEST(DeploymentConfigTest, MissingFileIsNotFoundAndNamesIt) {
  absl::StatusOr<DeploymentConfig> config = LoadDeploymentConfig("/nonexistent/deploy.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("/nonexistent/deploy.yaml"));
}

TEST(DeploymentConfigTest, TensorParallelSizeDefaultsToGpusPerReplica) {
  const std::string yaml = R"(
model: {random_weights: qwen3-32b}
decode_workers:
  replicas: 2
  devices: [[0, 1], [2, 3]]
  kv_cache: {memory_fraction: 0.8}
selectors:
  replicas: 2
  devices: [[4], [4]]
)";
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->decode_workers.tensor_parallel_size, 2);
  // Two selectors may share a GPU; a selector may share one with a decode worker too.
  EXPECT_EQ(config->selectors.devices.gpus_per_replica, (std::vector<std::vector<int>>{{4}, {4}}));
  EXPECT_TRUE(config->model.tokenizer.empty());
}

TEST(DeploymentConfigTest, SelectorsFollowCpuDecodeWorkersWhenDevicesOmitted) {
  const std::string yaml = R"(
model: {path: m}
decode_workers: {kv_cache: {blocks: 8}}
selectors: {replicas: 3}
)";
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->selectors.devices.cpu);
  EXPECT_EQ(config->sparse.policy, SparsePolicy::kAsyncSpade);  // the default policy
}

TEST(DeploymentConfigTest, SelectorsOnGpuWorkersNeedDevices) {
  const std::string yaml = R"(
model: {random_weights: qwen3-0.6b}
decode_workers: {devices: [[0]], kv_cache: {memory_fraction: 0.5}}
selectors: {replicas: 1}
)";
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("selectors.devices: required"));
}

TEST(DeploymentConfigTest, ExplicitNullMeansDefault) {
  const std::string yaml = R"(
model:
  path: m
  tokenizer:
controller:
  metrics_port: ~
decode_workers: {kv_cache: {blocks: 8}}
sparse: {policy: dense}
)";
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/d");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model.tokenizer, "/d/m");
  EXPECT_FALSE(config->controller.metrics_port.has_value());
}

TEST(DeploymentConfigTest, EveryProblemIsReportedAtOnceInFileOrder) {
  const std::string yaml = R"(model:
  path: m
  dtyp: bfloat16
decode_workers:
  max_batch_size: 0
  kv_cache: {blocks: 8}
sparse:
  policy: dense
  recent: 0
)";
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/");
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  EXPECT_THAT(message, HasSubstr("3 problems"));
  const size_t dtype = message.find("line 3, column 3: model.dtyp: unknown key in 'model' (did you mean 'dtype'?)");
  const size_t batch =
      message.find("line 5, column 19: decode_workers.max_batch_size: must be an integer in [1, 65536] (got 0)");
  const size_t recent = message.find("line 9, column 3: sparse.recent:");
  ASSERT_NE(dtype, std::string::npos) << message;
  ASSERT_NE(batch, std::string::npos) << message;
  ASSERT_NE(recent, std::string::npos) << message;
  EXPECT_LT(dtype, batch);
  EXPECT_LT(batch, recent);
}

TEST(DeploymentConfigTest, DefaultPolicyWithoutSelectorsPointsAtTheFix) {
  const std::string yaml = "model: {path: m}\ndecode_workers: {kv_cache: {blocks: 8}}\n";
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("selectors: sparse.policy is asyncspade (the default when unset), which needs"));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("selectors: {replicas: 1}"));
}

TEST(DeploymentConfigTest, ReplicasWithDifferentGpuCountsAreRejected) {
  const std::string yaml = R"(
model: {random_weights: qwen3-14b}
decode_workers:
  replicas: 2
  devices: [[0, 1], [2]]
  kv_cache: {memory_fraction: 0.9}
sparse: {policy: quest}
)";
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(
      std::string(config.status().message()),
      HasSubstr("line 5, column 21: decode_workers.devices[1]: lists 1 GPU(s) but decode_workers.devices[0] lists 2"));
}

TEST(DeploymentConfigTest, MaxRestartsWithoutRestartsIsAMistake) {
  std::string yaml = kMinimalYaml;
  yaml += "selectors: {replicas: 0, restart: never, max_restarts: 5}\n";
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("selectors.max_restarts: has no effect with restart: never"));
}

TEST(DeploymentConfigTest, FractionalIntegerIsAWrongType) {
  std::string yaml = kMinimalYaml;
  yaml.replace(yaml.find("blocks: 64"), 10, "blocks: 6.5");
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(yaml, "/");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr("decode_workers.kv_cache.blocks: expected an integer, got '6.5'"));
}

TEST(DeploymentConfigTest, DenseBelowThresholdSwitchesTheShortContextRuleOff) {
  std::string yaml = kMinimalYaml;
  absl::StatusOr<DeploymentConfig> defaults = ParseDeploymentConfig(yaml, "/");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_TRUE(defaults->sparse.dense_below_threshold);
  EXPECT_EQ(defaults->sparse.SparseFromContext(),
            int64_t{defaults->sparse.sinks} + defaults->sparse.recent + defaults->sparse.budget);

  yaml.replace(yaml.find("policy: dense"), 13, "policy: dense\n  dense_below_threshold: false");
  absl::StatusOr<DeploymentConfig> off = ParseDeploymentConfig(yaml, "/");
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->sparse.dense_below_threshold);
  EXPECT_EQ(off->sparse.SparseFromContext(), 0);

  yaml.replace(yaml.find("dense_below_threshold: false"), 28, "dense_below_threshold: maybe");
  absl::StatusOr<DeploymentConfig> bad = ParseDeploymentConfig(yaml, "/");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("sparse.dense_below_threshold"));
}

// ---------------------------------------------------------------------------------------------
// Malformed files: each is rejected with a message naming the offending key, at its line
// ---------------------------------------------------------------------------------------------

struct BadFileCase {
  const char* file;
  const char* key;   // the key path the message must name
  const char* text;  // and what it must say about it
};

void PrintTo(const BadFileCase& c, std::ostream* os) { *os << c.file; }

const BadFileCase kBadFiles[] = {
    {"bad_wrong_type.yaml", "decode_workers.replicas", "expected an integer, got 'two'"},
    {"bad_unknown_key_typo.yaml", "decode_workers.kv_cache.blokcs", "did you mean 'blocks'?"},
    {"bad_unknown_section.yaml", "selector", "did you mean 'selectors'?"},
    {"bad_negative_budget.yaml", "sparse.budget", "got -5"},
    {"bad_tp_mismatch.yaml", "decode_workers.tensor_parallel_size", "decode_workers.devices[0] lists 1 GPU(s)"},
    {"bad_kv_both.yaml", "decode_workers.kv_cache.memory_fraction", "exactly one"},
    {"bad_kv_neither.yaml", "decode_workers.kv_cache", "set exactly one of blocks"},
    {"bad_memory_fraction_on_cpu.yaml", "decode_workers.kv_cache.memory_fraction", "GPU decode workers only"},
    {"bad_unknown_policy.yaml", "sparse.policy", "did you mean 'asyncspade'?"},
    {"bad_selector_layers_overlap.yaml", "selectors.layers[1]", "overlaps selectors.layers[0] [0, 5]"},
    {"bad_selector_layers_gap.yaml", "selectors.layers[1]", "no selector serves layer(s) 10..11"},
    {"bad_selector_layers_count.yaml", "selectors.layers", "2 layer range(s) but selectors.replicas is 3"},
    {"bad_heartbeat_timeout.yaml", "lifecycle.heartbeat_timeout_ms", "greater than lifecycle.heartbeat_interval_ms"},
    {"bad_lags_not_below_window.yaml", "sparse.predictor.lags", "1 <= lags < window = 4"},
    {"bad_syntax.yaml", "", "YAML syntax error"},
    {"bad_empty.yaml", "", "is empty"},
    {"bad_comments_only.yaml", "", "is empty"},
    {"bad_no_model.yaml", "model", "required section is missing"},
    {"bad_model_path_and_random_weights.yaml", "model.random_weights", "not both"},
    {"bad_random_weights_preset.yaml", "model.random_weights", "unknown value 'qwen3-7b'"},
    {"bad_asyncspade_without_selectors.yaml", "selectors.replicas", "needs at least one KV selector"},
    {"bad_flat_device_list.yaml", "decode_workers.devices", "a flat list of GPU ids is ambiguous"},
    {"bad_gpu_shared_by_decode_workers.yaml", "decode_workers.devices[1]", "GPU 0 is already used"},
    {"bad_selectors_on_cpu_with_gpu_workers.yaml", "selectors.devices", "both must be on GPUs"},
    {"bad_selector_two_gpus.yaml", "selectors.devices[0]", "exactly one GPU"},
    {"bad_port_clash.yaml", "controller.http_port", "port 8000 is already controller.grpc_port"},
    {"bad_duplicate_key.yaml", "sparse.budget", "written twice"},
    {"bad_kv_too_small_for_max_seq_len.yaml", "decode_workers.kv_cache.blocks", "raise blocks to at least 256"},
    {"bad_min_context_below_floor.yaml", "sparse.min_context_for_sparse", "at least sinks + recent + budget = 324"},
    {"bad_two_documents.yaml", "", "2 YAML documents"},
    {"bad_section_not_a_mapping.yaml", "sparse", "expected a mapping"},
    {"bad_top_level_not_a_mapping.yaml", "", "the top level must be a mapping of sections"},
    {"bad_restart_policy.yaml", "decode_workers.restart", "accepted: never or on-failure"},
};

// The 1-based line holding the "# <- error" marker, or 0.
int MarkedLine(const fs::path& file) {
  std::ifstream in(file);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find("# <- error") != std::string::npos) return number;
  }
  return 0;
}

class BadDeploymentFileTest : public ::testing::TestWithParam<BadFileCase> {};

TEST_P(BadDeploymentFileTest, IsRejectedNamingTheKeyAndLine) {
  const BadFileCase& c = GetParam();
  const fs::path file = FixtureDir() / c.file;
  ASSERT_TRUE(fs::exists(file)) << file;
  absl::StatusOr<DeploymentConfig> config = LoadDeploymentConfig(file.string());
  ASSERT_FALSE(config.ok()) << c.file << " was accepted";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(config.status().message());
  EXPECT_THAT(message, HasSubstr(c.text));
  EXPECT_THAT(message, HasSubstr(file.string())) << "the message must name the file";
  if (*c.key != '\0') {
    EXPECT_THAT(message, HasSubstr(std::string(" ") + c.key + ": "));
  }
  if (const int line = MarkedLine(file); line > 0) {
    EXPECT_THAT(message, HasSubstr(file.string() + ":" + std::to_string(line) + ":"));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BadDeploymentFileTest, ::testing::ValuesIn(kBadFiles),
                         [](const ::testing::TestParamInfo<BadFileCase>& info) {
                           std::string name = fs::path(info.param.file).stem().string();
                           for (char& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

TEST(DeploymentConfigTest, EveryBadFixtureHasAnExpectation) {
  std::set<std::string> covered;
  for (const BadFileCase& c : kBadFiles) covered.insert(c.file);
  int fixtures = 0;
  for (const auto& entry : fs::directory_iterator(FixtureDir())) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("bad_", 0) != 0) continue;
    ++fixtures;
    EXPECT_TRUE(covered.count(name)) << name << " has no entry in kBadFiles";
  }
  EXPECT_GE(fixtures, 10);
}

// ---------------------------------------------------------------------------------------------
// Launch-time checks against the model
// ---------------------------------------------------------------------------------------------

DeploymentConfig WithSelectors(int replicas, std::optional<std::vector<LayerRange>> layers) {
  DeploymentConfig config;
  config.selectors.replicas = replicas;
  config.selectors.layers = std::move(layers);
  return config;
}

TEST(ResolveSelectorLayersTest, AutoSplitsEvenlyWithTheRemainderFirst) {
  absl::StatusOr<std::vector<LayerRange>> ranges = ResolveSelectorLayers(WithSelectors(3, std::nullopt), 10);
  ASSERT_TRUE(ranges.ok()) << ranges.status();
  EXPECT_EQ(*ranges, (std::vector<LayerRange>{{0, 3}, {4, 6}, {7, 9}}));

  for (int layers : {1, 7, 28, 36, 64}) {
    for (int replicas = 1; replicas <= std::min(layers, 8); ++replicas) {
      absl::StatusOr<std::vector<LayerRange>> split =
          ResolveSelectorLayers(WithSelectors(replicas, std::nullopt), layers);
      ASSERT_TRUE(split.ok()) << split.status();
      ASSERT_EQ(static_cast<int>(split->size()), replicas);
      int next = 0, smallest = layers, largest = 0;
      for (const LayerRange& range : *split) {
        EXPECT_EQ(range.first, next);
        next = range.last + 1;
        smallest = std::min(smallest, range.size());
        largest = std::max(largest, range.size());
      }
      EXPECT_EQ(next, layers);
      EXPECT_LE(largest - smallest, 1);
    }
  }
}

TEST(ResolveSelectorLayersTest, NoSelectorsMeansNoRanges) {
  absl::StatusOr<std::vector<LayerRange>> ranges = ResolveSelectorLayers(WithSelectors(0, std::nullopt), 12);
  ASSERT_TRUE(ranges.ok());
  EXPECT_TRUE(ranges->empty());
}

TEST(ResolveSelectorLayersTest, MoreSelectorsThanLayersIsAnError) {
  absl::Status status = ResolveSelectorLayers(WithSelectors(5, std::nullopt), 4).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("selectors.replicas"));
}

TEST(ResolveSelectorLayersTest, ExplicitRangesMustCoverExactlyTheModelsLayers) {
  const std::vector<LayerRange> ranges = {{6, 11}, {0, 5}};
  absl::StatusOr<std::vector<LayerRange>> exact = ResolveSelectorLayers(WithSelectors(2, ranges), 12);
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ(*exact, ranges);  // replica order is kept

  absl::Status short_of_model = ResolveSelectorLayers(WithSelectors(2, ranges), 16).status();
  EXPECT_THAT(short_of_model.message(), HasSubstr("no selector serves layer(s) 12..15"));

  absl::Status past_model = ResolveSelectorLayers(WithSelectors(2, ranges), 10).status();
  EXPECT_THAT(past_model.message(), HasSubstr("selectors.layers[0]: [6, 11] is outside"));

  absl::Status overlap = ResolveSelectorLayers(WithSelectors(2, std::vector<LayerRange>{{0, 6}, {6, 11}}), 12).status();
  EXPECT_THAT(overlap.message(), HasSubstr("layer 6 is also served by selectors.layers[0]"));
}

ModelConfig SmallModel() {
  ModelConfig model;
  model.num_layers = 12;
  model.num_heads = 8;
  model.num_kv_heads = 2;
  model.head_dim = 64;
  model.max_position_embeddings = 2048;
  return model;
}

DeploymentConfig ExistingModelDeployment() {
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(kMinimalYaml, ::testing::TempDir());
  EXPECT_TRUE(config.ok()) << config.status();
  config->model.path = ::testing::TempDir();  // any existing directory
  config->model.tokenizer = ::testing::TempDir();
  return *config;
}

TEST(ResolveDeploymentForModelTest, DefaultsMaxSeqLenToTheModelCappedAtTheDefaultCap) {
  DeploymentConfig config = ExistingModelDeployment();
  config.decode_workers.kv_cache.blocks = 1 << 20;
  ModelConfig model = SmallModel();
  absl::StatusOr<ResolvedDeployment> resolved = ResolveDeploymentForModel(config, model);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->max_seq_len, 2048);
  model.max_position_embeddings = 131072;
  resolved = ResolveDeploymentForModel(config, model);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->max_seq_len, kDefaultMaxSeqLenCap);
}

TEST(ResolveDeploymentForModelTest, RejectsWhatTheModelCannotServe) {
  const ModelConfig model = SmallModel();
  DeploymentConfig config = ExistingModelDeployment();

  config.model.max_seq_len = 4096;
  config.decode_workers.kv_cache.blocks = 1000;
  EXPECT_THAT(ResolveDeploymentForModel(config, model).status().message(),
              HasSubstr("model.max_seq_len: 4096 exceeds"));

  config.model.max_seq_len.reset();
  config.decode_workers.kv_cache.blocks = 10;  // 160 tokens < 2048
  EXPECT_THAT(ResolveDeploymentForModel(config, model).status().message(),
              HasSubstr("decode_workers.kv_cache.blocks: 10 pages"));

  config.decode_workers.kv_cache.blocks = 128;
  config.decode_workers.tensor_parallel_size = 4;  // does not divide 2 KV heads
  EXPECT_THAT(ResolveDeploymentForModel(config, model).status().message(),
              HasSubstr("decode_workers.tensor_parallel_size: 4 does not divide"));

  config.decode_workers.tensor_parallel_size = 2;
  config.selectors.replicas = 13;
  EXPECT_THAT(ResolveDeploymentForModel(config, model).status().message(), HasSubstr("selectors.replicas"));

  config.selectors.replicas = 2;
  absl::StatusOr<ResolvedDeployment> resolved = ResolveDeploymentForModel(config, model);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->selector_layers, (std::vector<LayerRange>{{0, 5}, {6, 11}}));
}

TEST(ResolveDeploymentForModelTest, MissingCheckpointIsReportedAtLaunchNotAtParse) {
  absl::StatusOr<DeploymentConfig> config = ParseDeploymentConfig(kMinimalYaml, "/nonexistent/deploy");
  ASSERT_TRUE(config.ok()) << config.status();  // parsing does not touch the file system
  absl::Status status = ResolveDeploymentForModel(*config, SmallModel()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("model.path: '/nonexistent/models/tiny'"));
}

TEST(ResolveDeploymentForModelTest, LocalYamlFitsTheDemoModel) {
  absl::StatusOr<DeploymentConfig> config = LoadDeploymentConfig((DeployDir() / "local.yaml").string());
  ASSERT_TRUE(config.ok()) << config.status();
  if (!fs::exists(fs::path(config->model.path) / "config.json")) {
    GTEST_SKIP() << "demo model not fetched at " << config->model.path << " (tools/setup.sh fetches it)";
  }
  absl::StatusOr<ModelConfig> model = LoadModelConfig(config->model.path);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<ResolvedDeployment> resolved = ResolveDeploymentForModel(*config, *model);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->max_seq_len, *config->model.max_seq_len);
  ASSERT_EQ(resolved->selector_layers.size(), 2u);
  EXPECT_EQ(resolved->selector_layers.back().last, model->num_layers - 1);
}

}  // namespace
}  // namespace asyncspade
