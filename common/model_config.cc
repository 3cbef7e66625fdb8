#include "common/model_config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace asyncspade {
namespace {

using nlohmann::json;

constexpr const char* kSupportedArchitectures =
    "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

absl::Status KeyError(const std::string& key, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: key '", key, "' ", what));
}

bool IsAbsent(const json& obj, const std::string& key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null();
}

// An integer-valued key. JSON writers sometimes emit 64.0 for 64; that is accepted, 64.5 is not.
absl::StatusOr<int64_t> IntValue(const json& value, const std::string& key) {
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    double d = value.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<int64_t>(d);
  }
  return KeyError(key, absl::StrCat("must be an integer, got ", value.dump()));
}

absl::StatusOr<std::optional<int64_t>> OptionalInt(const json& obj, const std::string& key) {
  if (IsAbsent(obj, key)) return std::optional<int64_t>();
  ASSIGN_OR_RETURN(int64_t v, IntValue(obj.at(key), key));
  return std::optional<int64_t>(v);
}

// A size that must be present and fit an int (sizes are stored as int in ModelConfig).
absl::StatusOr<int> RequiredSize(const json& obj, const std::string& key) {
  if (IsAbsent(obj, key)) return KeyError(key, "is missing; it is required for every supported architecture");
  ASSIGN_OR_RETURN(int64_t v, IntValue(obj.at(key), key));
  if (v <= 0) return KeyError(key, absl::StrCat("must be positive, got ", v));
  if (v > std::numeric_limits<int>::max()) return KeyError(key, absl::StrCat("is too large: ", v));
  return static_cast<int>(v);
}

absl::StatusOr<int> OptionalSize(const json& obj, const std::string& key, int fallback) {
  if (IsAbsent(obj, key)) return fallback;
  return RequiredSize(obj, key);
}

absl::StatusOr<double> OptionalDouble(const json& obj, const std::string& key, double fallback,
                                      const std::string& key_for_errors) {
  if (IsAbsent(obj, key)) return fallback;
  const json& v = obj.at(key);
  if (!v.is_number()) return KeyError(key_for_errors, absl::StrCat("must be a number, got ", v.dump()));
  double d = v.get<double>();
  if (!std::isfinite(d)) return KeyError(key_for_errors, "must be finite");
  return d;
}

absl::StatusOr<bool> OptionalBool(const json& obj, const std::string& key, bool fallback) {
  if (IsAbsent(obj, key)) return fallback;
  const json& v = obj.at(key);
  if (!v.is_boolean()) return KeyError(key, absl::StrCat("must be true or false, got ", v.dump()));
  return v.get<bool>();
}

// `eos_token_id` is an int or a list of ints (Llama-3 lists several stop ids).
absl::Status AppendTokenIds(const json& obj, const std::string& key, const std::string& file,
                            std::vector<int>* ids) {
  if (IsAbsent(obj, key)) return absl::OkStatus();
  const json& v = obj.at(key);
  auto append_one = [&](const json& item) -> absl::Status {
    if (!item.is_number_integer() || item.get<int64_t>() < 0 ||
        item.get<int64_t>() > std::numeric_limits<int>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": key '", key, "' must be a non-negative integer or a list of them, got ", v.dump()));
    }
    int id = static_cast<int>(item.get<int64_t>());
    if (std::find(ids->begin(), ids->end(), id) == ids->end()) ids->push_back(id);
    return absl::OkStatus();
  };
  if (v.is_array()) {
    for (const json& item : v) RETURN_IF_ERROR(append_one(item));
    return absl::OkStatus();
  }
  return append_one(v);
}

absl::StatusOr<ModelArch> ResolveArchitecture(const json& config, std::string* name) {
  static const std::pair<const char*, ModelArch> kByClass[] = {
      {"LlamaForCausalLM", ModelArch::kLlama},
      {"Qwen2ForCausalLM", ModelArch::kQwen2},
      {"Qwen3ForCausalLM", ModelArch::kQwen3},
  };
  static const std::pair<const char*, std::pair<const char*, ModelArch>> kByModelType[] = {
      {"llama", {"LlamaForCausalLM", ModelArch::kLlama}},
      {"qwen2", {"Qwen2ForCausalLM", ModelArch::kQwen2}},
      {"qwen3", {"Qwen3ForCausalLM", ModelArch::kQwen3}},
  };
  if (!IsAbsent(config, "architectures")) {
    const json& archs = config.at("architectures");
    if (!archs.is_array() || archs.empty()) {
      return KeyError("architectures", absl::StrCat("must be a non-empty list of class names, got ", archs.dump()));
    }
    std::vector<std::string> seen;
    for (const json& a : archs) {
      if (!a.is_string()) return KeyError("architectures", absl::StrCat("must list strings, got ", archs.dump()));
      seen.push_back(a.get<std::string>());
      for (const auto& [cls, arch] : kByClass) {
        if (seen.back() == cls) {
          *name = cls;
          return arch;
        }
      }
    }
    return absl::UnimplementedError(absl::StrCat(
        "config.json: unsupported architecture ", absl::StrJoin(seen, ", "),
        " (key 'architectures'); supported: ", kSupportedArchitectures));
  }
  // Hand-written configs sometimes give only `model_type`.
  if (!IsAbsent(config, "model_type") && config.at("model_type").is_string()) {
    std::string model_type = config.at("model_type").get<std::string>();
    for (const auto& [type, cls_arch] : kByModelType) {
      if (model_type == type) {
        *name = cls_arch.first;
        return cls_arch.second;
      }
    }
    return absl::UnimplementedError(absl::StrCat(
        "config.json: unsupported model_type '", model_type,
        "' (no 'architectures' key); supported architectures: ", kSupportedArchitectures));
  }
  return KeyError("architectures", absl::StrCat("is missing (and so is 'model_type'); set it to one of: ",
                                                kSupportedArchitectures));
}

// RoPE settings come either as top-level `rope_theta` + `rope_scaling` (transformers 4.x) or as
// `rope_parameters: {rope_theta, rope_type, ...}` (transformers 5.x). Both are read; the newer
// form wins where both are given.
absl::Status ParseRope(const json& config, ModelConfig* out) {
  ASSIGN_OR_RETURN(out->rope_theta, OptionalDouble(config, "rope_theta", 10000.0, "rope_theta"));
  const json* scaling = nullptr;
  std::string scaling_key;
  if (!IsAbsent(config, "rope_parameters")) {
    scaling_key = "rope_parameters";
    scaling = &config.at(scaling_key);
  } else if (!IsAbsent(config, "rope_scaling")) {
    scaling_key = "rope_scaling";
    scaling = &config.at(scaling_key);
  }
  if (scaling != nullptr) {
    if (!scaling->is_object()) {
      return KeyError(scaling_key, absl::StrCat("must be an object, got ", scaling->dump()));
    }
    if (scaling_key == "rope_parameters" && !IsAbsent(*scaling, "rope_theta")) {
      ASSIGN_OR_RETURN(out->rope_theta, OptionalDouble(*scaling, "rope_theta", 10000.0,
                                                       "rope_parameters.rope_theta"));
    }
    // transformers 4.x wrote the type as "type"; later versions as "rope_type".
    std::string type = "default";
    for (const char* type_key : {"rope_type", "type"}) {
      if (!IsAbsent(*scaling, type_key)) {
        const json& t = scaling->at(type_key);
        if (!t.is_string()) {
          return KeyError(absl::StrCat(scaling_key, ".", type_key), absl::StrCat("must be a string, got ", t.dump()));
        }
        type = t.get<std::string>();
        break;
      }
    }
    ASSIGN_OR_RETURN(double partial_rotary, OptionalDouble(*scaling, "partial_rotary_factor", 1.0,
                                                           scaling_key + ".partial_rotary_factor"));
    if (partial_rotary != 1.0) {
      return absl::UnimplementedError(absl::StrCat("config.json: '", scaling_key,
                                                   ".partial_rotary_factor' is ", partial_rotary,
                                                   "; only rotary embeddings over the whole head (1.0) are supported"));
    }
    if (type == "llama3") {
      RopeScaling& rs = out->rope_scaling;
      rs.type = RopeScaling::Type::kLlama3;
      for (const char* required : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
        if (IsAbsent(*scaling, required)) {
          return KeyError(absl::StrCat(scaling_key, ".", required), "is missing; rope_type 'llama3' requires it");
        }
      }
      ASSIGN_OR_RETURN(rs.factor, OptionalDouble(*scaling, "factor", 1.0, scaling_key + ".factor"));
      ASSIGN_OR_RETURN(rs.low_freq_factor,
                       OptionalDouble(*scaling, "low_freq_factor", 1.0, scaling_key + ".low_freq_factor"));
      ASSIGN_OR_RETURN(rs.high_freq_factor,
                       OptionalDouble(*scaling, "high_freq_factor", 4.0, scaling_key + ".high_freq_factor"));
      ASSIGN_OR_RETURN(int64_t original,
                       IntValue(scaling->at("original_max_position_embeddings"),
                                scaling_key + ".original_max_position_embeddings"));
      if (rs.factor <= 0) return KeyError(scaling_key + ".factor", "must be positive");
      if (rs.low_freq_factor <= 0) return KeyError(scaling_key + ".low_freq_factor", "must be positive");
      if (rs.high_freq_factor <= rs.low_freq_factor) {
        return KeyError(scaling_key + ".high_freq_factor",
                        absl::StrCat("must be greater than low_freq_factor (", rs.low_freq_factor, "), got ",
                                     rs.high_freq_factor));
      }
      if (original <= 0 || original > std::numeric_limits<int>::max()) {
        return KeyError(scaling_key + ".original_max_position_embeddings",
                        absl::StrCat("must be a positive integer, got ", original));
      }
      rs.original_max_position_embeddings = static_cast<int>(original);
    } else if (type != "default") {
      return absl::UnimplementedError(absl::StrCat(
          "config.json: unsupported RoPE type '", type, "' in key '", scaling_key,
          "'; supported: 'default' (plain RoPE) and 'llama3'. Models with linear, dynamic, yarn or "
          "longrope scaling cannot be served yet"));
    }
  }
  ASSIGN_OR_RETURN(double partial_rotary,
                   OptionalDouble(config, "partial_rotary_factor", 1.0, "partial_rotary_factor"));
  if (partial_rotary != 1.0) {
    return absl::UnimplementedError(absl::StrCat("config.json: 'partial_rotary_factor' is ", partial_rotary,
                                                 "; only rotary embeddings over the whole head (1.0) are supported"));
  }
  if (out->rope_theta <= 0) return KeyError("rope_theta", absl::StrCat("must be positive, got ", out->rope_theta));
  return absl::OkStatus();
}

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  json parsed = json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not valid JSON; re-download or regenerate it"));
  }
  return parsed;
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& config) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError("config.json: the top level must be a JSON object");
  }
  ModelConfig out;
  ASSIGN_OR_RETURN(out.arch, ResolveArchitecture(config, &out.architecture));

  ASSIGN_OR_RETURN(out.vocab_size, RequiredSize(config, "vocab_size"));
  ASSIGN_OR_RETURN(out.hidden_size, RequiredSize(config, "hidden_size"));
  ASSIGN_OR_RETURN(out.intermediate_size, RequiredSize(config, "intermediate_size"));
  ASSIGN_OR_RETURN(out.num_layers, RequiredSize(config, "num_hidden_layers"));
  ASSIGN_OR_RETURN(out.num_heads, RequiredSize(config, "num_attention_heads"));
  // HF: a missing num_key_value_heads means multi-head attention.
  ASSIGN_OR_RETURN(out.num_kv_heads, OptionalSize(config, "num_key_value_heads", out.num_heads));
  if (out.num_heads % out.num_kv_heads != 0) {
    return KeyError("num_attention_heads",
                    absl::StrCat("(", out.num_heads, ") must be a multiple of num_key_value_heads (",
                                 out.num_kv_heads, ")"));
  }

  // Missing head_dim: Llama and Qwen2 derive hidden_size / num_attention_heads, but Qwen3Config
  // defaults it to 128 (Qwen3 models decouple head_dim from hidden_size), so follow each.
  if (IsAbsent(config, "head_dim")) {
    if (out.arch == ModelArch::kQwen3) {
      out.head_dim = 128;
    } else if (out.hidden_size % out.num_heads != 0) {
      return KeyError("head_dim", absl::StrCat("is missing and hidden_size (", out.hidden_size,
                                               ") is not divisible by num_attention_heads (", out.num_heads,
                                               "); state head_dim explicitly"));
    } else {
      out.head_dim = out.hidden_size / out.num_heads;
    }
  } else {
    ASSIGN_OR_RETURN(out.head_dim, RequiredSize(config, "head_dim"));
  }
  if (out.head_dim % 2 != 0) {
    return KeyError("head_dim", absl::StrCat("must be even for rotary embeddings, got ", out.head_dim));
  }

  const int default_max_positions = out.arch == ModelArch::kLlama ? 2048 : 32768;
  ASSIGN_OR_RETURN(out.max_position_embeddings,
                   OptionalSize(config, "max_position_embeddings", default_max_positions));
  ASSIGN_OR_RETURN(out.rms_norm_eps, OptionalDouble(config, "rms_norm_eps", 1e-6, "rms_norm_eps"));
  if (out.rms_norm_eps <= 0) {
    return KeyError("rms_norm_eps", absl::StrCat("must be positive, got ", out.rms_norm_eps));
  }
  RETURN_IF_ERROR(ParseRope(config, &out));
  ASSIGN_OR_RETURN(out.tie_word_embeddings, OptionalBool(config, "tie_word_embeddings", false));

  ASSIGN_OR_RETURN(bool attention_bias_key, OptionalBool(config, "attention_bias", false));
  switch (out.arch) {
    case ModelArch::kQwen2:
      // Qwen2Attention hard-codes bias=True on q/k/v and bias=False on o_proj.
      out.attention_bias = true;
      out.o_proj_bias = false;
      break;
    case ModelArch::kLlama:
    case ModelArch::kQwen3:
      // LlamaAttention and Qwen3Attention put `attention_bias` on all four projections.
      out.attention_bias = attention_bias_key;
      out.o_proj_bias = attention_bias_key;
      break;
  }
  out.qk_norm = out.arch == ModelArch::kQwen3;

  ASSIGN_OR_RETURN(bool mlp_bias, OptionalBool(config, "mlp_bias", false));
  if (mlp_bias) {
    return absl::UnimplementedError("config.json: 'mlp_bias': true is not supported (MLP projections without "
                                    "biases only)");
  }
  if (!IsAbsent(config, "hidden_act")) {
    const json& act = config.at("hidden_act");
    if (!act.is_string() || act.get<std::string>() != "silu") {
      return absl::UnimplementedError(
          absl::StrCat("config.json: 'hidden_act' ", act.dump(), " is not supported; only \"silu\" (SwiGLU MLP)"));
    }
  }
  // Qwen2/Qwen3 sliding-window attention on some layers changes the model; refusing beats silently
  // computing different logits.
  ASSIGN_OR_RETURN(bool sliding_window, OptionalBool(config, "use_sliding_window", false));
  if (sliding_window) {
    return absl::UnimplementedError(
        "config.json: 'use_sliding_window': true is not supported; only full attention on every layer");
  }

  if (!IsAbsent(config, "layer_types")) {
    const json& layer_types = config.at("layer_types");
    if (!layer_types.is_array()) {
      return KeyError("layer_types", absl::StrCat("must be a list, got ", layer_types.dump()));
    }
    for (const json& type : layer_types) {
      if (!type.is_string() || type.get<std::string>() != "full_attention") {
        return absl::UnimplementedError(absl::StrCat(
            "config.json: 'layer_types' contains ", type.dump(),
            "; only \"full_attention\" layers are supported"));
      }
    }
  }

  ASSIGN_OR_RETURN(std::optional<int64_t> bos, OptionalInt(config, "bos_token_id"));
  if (bos.has_value()) {
    if (*bos < 0 || *bos >= out.vocab_size) {
      return KeyError("bos_token_id", absl::StrCat("(", *bos, ") must be in [0, vocab_size=", out.vocab_size, ")"));
    }
    out.bos_token_id = static_cast<int>(*bos);
  }
  RETURN_IF_ERROR(AppendTokenIds(config, "eos_token_id", "config.json", &out.eos_token_ids));
  for (int id : out.eos_token_ids) {
    if (id >= out.vocab_size) {
      return KeyError("eos_token_id", absl::StrCat("(", id, ") must be below vocab_size (", out.vocab_size, ")"));
    }
  }
  // transformers 5.x writes `dtype`; 4.x wrote `torch_dtype`.
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (!IsAbsent(config, key) && config.at(key).is_string()) {
      out.torch_dtype = config.at(key).get<std::string>();
      break;
    }
  }
  return out;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const std::string config_path = (fs::path(model_dir) / "config.json").string();
  std::error_code ec;
  if (!fs::is_regular_file(config_path, ec)) {
    return absl::NotFoundError(absl::StrCat(
        "no config.json in model directory '", model_dir,
        "'; pass a Hugging Face model directory (config.json + model.safetensors)"));
  }
  ASSIGN_OR_RETURN(json config, ReadJsonFile(config_path));
  auto parsed = ParseModelConfig(config);
  if (!parsed.ok()) {
    // ParseModelConfig names "config.json"; here the full path is known and more useful.
    std::string message(parsed.status().message());
    const std::string prefix = "config.json: ";
    if (message.rfind(prefix, 0) == 0) message = message.substr(prefix.size());
    return absl::Status(parsed.status().code(), absl::StrCat(config_path, ": ", message));
  }
  ModelConfig out = std::move(parsed).value();

  const std::string generation_path = (fs::path(model_dir) / "generation_config.json").string();
  if (fs::is_regular_file(generation_path, ec)) {
    ASSIGN_OR_RETURN(json generation, ReadJsonFile(generation_path));
    if (!generation.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(generation_path, ": the top level must be a JSON object"));
    }
    RETURN_IF_ERROR(AppendTokenIds(generation, "eos_token_id", generation_path, &out.eos_token_ids));
    for (int id : out.eos_token_ids) {
      if (id >= out.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(generation_path, ": eos_token_id ", id,
                                                       " must be below vocab_size (", out.vocab_size, ")"));
      }
    }
    if (!out.bos_token_id.has_value()) {
      auto bos = OptionalInt(generation, "bos_token_id");
      if (bos.ok() && bos->has_value() && **bos >= 0 && **bos < out.vocab_size) {
        out.bos_token_id = static_cast<int>(**bos);
      }
    }
  }
  return out;
}

}  // namespace asyncspade
