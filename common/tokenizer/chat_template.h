// Chat formatting for chat models without a Jinja engine: the template text of
// tokenizer_config.json is recognised as one of the families below and rendered natively.
//   - Qwen3: ChatML with the hybrid-thinking switch (enable_thinking) and <think> blocks removed
//     from assistant turns before the last user query.
//   - ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per message (SmolLM2, Qwen2.5 without
//     tools), with the template's default system prompt when the conversation has none.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace asyncspade {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (Qwen3 also "tool")
  std::string content;
};

class ChatTemplate {
 public:
  enum class Family { kQwen3, kChatMl };

  // Reads "chat_template" (a string, or a list of {name, template} where "default" is used).
  static absl::StatusOr<ChatTemplate> FromTokenizerConfig(const nlohmann::json& tokenizer_config);
  // `<dir>/tokenizer_config.json`, falling back to `<dir>/chat_template.jinja`.
  static absl::StatusOr<ChatTemplate> FromModelDir(const std::string& model_dir);
  // Recognises the Jinja source of a chat template (e.g. from GGUF metadata).
  static absl::StatusOr<ChatTemplate> FromTemplateText(std::string_view jinja_source);

  std::string Render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     bool enable_thinking) const;

  Family family() const { return family_; }
  std::string_view family_name() const { return family_ == Family::kQwen3 ? "qwen3" : "chatml"; }
  // The system prompt the template inserts when the conversation starts without one.
  const std::optional<std::string>& default_system_prompt() const { return default_system_prompt_; }

 private:
  ChatTemplate(Family family, std::optional<std::string> default_system_prompt)
      : family_(family), default_system_prompt_(std::move(default_system_prompt)) {}
  std::string RenderQwen3(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                          bool enable_thinking) const;
  std::string RenderChatMl(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  Family family_;
  std::optional<std::string> default_system_prompt_;
};

}  // namespace asyncspade
