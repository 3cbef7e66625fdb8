// Typed access to tokenizer.json / tokenizer_config.json fields that reports a wrong or missing
// field by its JSON path ("pre_tokenizer.pretokenizers[1].behavior") instead of throwing.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace asyncspade::tokenizer {

// "normalizer" + "normalizers" -> "normalizer.normalizers"; index form: JsonPath(path, 3) -> "path[3]".
std::string JsonPath(std::string_view parent, std::string_view field);
std::string JsonPath(std::string_view parent, size_t index);

// `obj[field]` must be an object and must have a string "type"; returns it.
absl::StatusOr<std::string> ComponentType(const nlohmann::json& component, std::string_view path);

absl::StatusOr<std::string> RequiredString(const nlohmann::json& obj, std::string_view field,
                                           std::string_view path);
// Absent or null -> nullopt.
absl::StatusOr<std::optional<std::string>> OptionalString(const nlohmann::json& obj, std::string_view field,
                                                          std::string_view path);
// Absent or null -> `fallback`.
absl::StatusOr<bool> OptionalBool(const nlohmann::json& obj, std::string_view field, std::string_view path,
                                  bool fallback);
absl::StatusOr<int64_t> OptionalInt(const nlohmann::json& obj, std::string_view field, std::string_view path,
                                    int64_t fallback);
// `obj[field]` must be an array (absent -> error).
absl::StatusOr<const nlohmann::json*> RequiredArray(const nlohmann::json& obj, std::string_view field,
                                                    std::string_view path);

// A string that must hold exactly one Unicode character (Metaspace replacement, Strip content).
absl::StatusOr<char32_t> RequiredChar(const nlohmann::json& obj, std::string_view field, std::string_view path);

}  // namespace asyncspade::tokenizer
