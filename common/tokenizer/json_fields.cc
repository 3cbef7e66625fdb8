#include "common/tokenizer/json_fields.h"

#include "absl/strings/str_cat.h"
#include "common/tokenizer/unicode.h"

namespace asyncspade::tokenizer {
namespace {

const char* TypeName(const nlohmann::json& value) { return value.type_name(); }

absl::Status WrongType(std::string_view path, std::string_view expected, const nlohmann::json& value) {
  return absl::InvalidArgumentError(absl::StrCat("key '", std::string(path), "' must be ",
                                                 std::string(expected), ", found ", TypeName(value)));
}

absl::Status Missing(std::string_view path, std::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("key '", std::string(path), "' (", std::string(expected), ") is missing"));
}

const nlohmann::json* Find(const nlohmann::json& obj, std::string_view field) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(std::string(field));
  return it == obj.end() ? nullptr : &*it;
}

}  // namespace

std::string JsonPath(std::string_view parent, std::string_view field) {
  if (parent.empty()) return std::string(field);
  return absl::StrCat(std::string(parent), ".", std::string(field));
}

std::string JsonPath(std::string_view parent, size_t index) {
  return absl::StrCat(std::string(parent), "[", index, "]");
}

absl::StatusOr<std::string> ComponentType(const nlohmann::json& component, std::string_view path) {
  if (!component.is_object()) return WrongType(path, "an object with a \"type\"", component);
  return RequiredString(component, "type", path);
}

absl::StatusOr<std::string> RequiredString(const nlohmann::json& obj, std::string_view field,
                                           std::string_view path) {
  const nlohmann::json* value = Find(obj, field);
  std::string full = JsonPath(path, field);
  if (value == nullptr) return Missing(full, "a string");
  if (!value->is_string()) return WrongType(full, "a string", *value);
  return value->get<std::string>();
}

absl::StatusOr<std::optional<std::string>> OptionalString(const nlohmann::json& obj, std::string_view field,
                                                          std::string_view path) {
  const nlohmann::json* value = Find(obj, field);
  if (value == nullptr || value->is_null()) return std::optional<std::string>();
  if (!value->is_string()) return WrongType(JsonPath(path, field), "a string or null", *value);
  return std::optional<std::string>(value->get<std::string>());
}

absl::StatusOr<bool> OptionalBool(const nlohmann::json& obj, std::string_view field, std::string_view path,
                                  bool fallback) {
  const nlohmann::json* value = Find(obj, field);
  if (value == nullptr || value->is_null()) return fallback;
  if (!value->is_boolean()) return WrongType(JsonPath(path, field), "true or false", *value);
  return value->get<bool>();
}

absl::StatusOr<int64_t> OptionalInt(const nlohmann::json& obj, std::string_view field, std::string_view path,
                                    int64_t fallback) {
  const nlohmann::json* value = Find(obj, field);
  if (value == nullptr || value->is_null()) return fallback;
  if (!value->is_number_integer()) return WrongType(JsonPath(path, field), "an integer", *value);
  return value->get<int64_t>();
}

absl::StatusOr<const nlohmann::json*> RequiredArray(const nlohmann::json& obj, std::string_view field,
                                                    std::string_view path) {
  const nlohmann::json* value = Find(obj, field);
  std::string full = JsonPath(path, field);
  if (value == nullptr) return Missing(full, "an array");
  if (!value->is_array()) return WrongType(full, "an array", *value);
  return value;
}

absl::StatusOr<char32_t> RequiredChar(const nlohmann::json& obj, std::string_view field, std::string_view path) {
  auto text = RequiredString(obj, field, path);
  if (!text.ok()) return text.status();
  if (text->empty() || CountCodepoints(*text) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("key '", JsonPath(path, field),
                                                   "' must be exactly one character, found \"", *text, "\""));
  }
  size_t pos = 0;
  return NextCodepoint(*text, pos);
}

}  // namespace asyncspade::tokenizer
