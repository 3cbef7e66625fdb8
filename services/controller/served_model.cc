#include "services/controller/served_model.h"

#include <filesystem>

#include "common/config/random_weight_presets.h"
#include "common/status.h"
#include "common/tokenizer/chat_template.h"

namespace asyncspade::controller {

absl::StatusOr<ServedModel> LoadServedModel(const DeploymentConfig& deployment) {
  ServedModel model;
  if (deployment.model.random_weights.has_value()) {
    absl::StatusOr<ModelConfig> config = RandomWeightPresetModelConfig(*deployment.model.random_weights);
    if (!config.ok()) return Annotate(config.status(), "model.random_weights");
    model.config = *std::move(config);
    model.name = *deployment.model.random_weights;
  } else {
    absl::StatusOr<ModelConfig> config = LoadModelConfig(deployment.model.path);
    if (!config.ok()) return Annotate(config.status(), "model.path");
    model.config = *std::move(config);
    model.name = std::filesystem::path(deployment.model.path).lexically_normal().filename().string();
    if (model.name.empty()) {
      model.name = std::filesystem::path(deployment.model.path).lexically_normal().parent_path().filename().string();
    }
  }
  absl::StatusOr<ResolvedDeployment> resolved = ResolveDeploymentForModel(deployment, model.config);
  if (!resolved.ok()) return resolved.status();
  model.max_seq_len = resolved->max_seq_len;
  model.has_tokenizer = !deployment.model.tokenizer.empty();
  if (model.has_tokenizer) {
    model.has_chat_template = ChatTemplate::FromModelDir(deployment.model.tokenizer).ok();
  }
  return model;
}

serving::v1::SparsePolicy ToProtoPolicy(SparsePolicy policy) {
  switch (policy) {
    case SparsePolicy::kDense:
      return serving::v1::SPARSE_POLICY_DENSE;
    case SparsePolicy::kQuest:
      return serving::v1::SPARSE_POLICY_QUEST;
    case SparsePolicy::kOracle:
      return serving::v1::SPARSE_POLICY_ORACLE;
    case SparsePolicy::kAsyncSpade:
      return serving::v1::SPARSE_POLICY_ASYNCSPADE;
  }
  return serving::v1::SPARSE_POLICY_UNSPECIFIED;
}

serving::v1::ModelInfo MakeModelInfo(const ServedModel& model, const SparsePolicyConfig& sparse_defaults) {
  serving::v1::ModelInfo info;
  info.set_name(model.name);
  info.set_architecture(model.config.architecture);
  info.set_vocab_size(model.config.vocab_size);
  info.set_num_layers(model.config.num_layers);
  info.set_num_heads(model.config.num_heads);
  info.set_num_kv_heads(model.config.num_kv_heads);
  info.set_head_dim(model.config.head_dim);
  info.set_max_seq_len(model.max_seq_len);
  for (int id : model.config.eos_token_ids) info.add_eos_token_ids(id);
  info.set_default_policy(ToProtoPolicy(sparse_defaults.policy));
  info.set_default_budget(sparse_defaults.budget);
  info.set_sinks(sparse_defaults.sinks);
  info.set_recent(sparse_defaults.recent);
  info.set_has_chat_template(model.has_chat_template);
  return info;
}

}  // namespace asyncspade::controller
