// What the controller knows of the model its deployment serves: the hyper-parameters (from the
// checkpoint's config.json or a random-weights preset), the served context length, and whether
// chat input can be rendered. Read once at start-up; it answers GetModelInfo and sizes the
// selectors' layer split.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "asyncspade/serving/v1/generation.pb.h"
#include "common/config/deployment_config.h"
#include "common/model_config.h"

namespace asyncspade::controller {

struct ServedModel {
  std::string name;  // the checkpoint directory's name, or the random-weights preset
  ModelConfig config;
  int max_seq_len = 0;
  bool has_tokenizer = false;  // text and chat input can be tokenized
  bool has_chat_template = false;
};

// Errors name the deployment key to fix (model.path, model.random_weights, selectors.layers, ...).
absl::StatusOr<ServedModel> LoadServedModel(const DeploymentConfig& deployment);

serving::v1::SparsePolicy ToProtoPolicy(SparsePolicy policy);

serving::v1::ModelInfo MakeModelInfo(const ServedModel& model, const SparsePolicyConfig& sparse_defaults);

}  // namespace asyncspade::controller
