#include "common/tokenizer/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace asyncspade {
namespace {

constexpr char kUnrecognised[] =
    "the chat template is not recognised (supported: Qwen3's hybrid-thinking ChatML and plain ChatML "
    "such as SmolLM2's); pass the raw prompt text with --prompt instead";

// The template with quotes unified, escapes "\n" turned into newlines and all whitespace
// removed, so that formatting differences between model repositories do not matter.
std::string Canonical(std::string_view source) {
  std::string out;
  for (size_t i = 0; i < source.size(); ++i) {
    char c = source[i];
    if (c == '\\' && i + 1 < source.size() && source[i + 1] == 'n') {
      out += "\\n";
      ++i;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"') {
      out.push_back('\'');
    } else if (c != ' ' && c != '\t' && c != '\r') {
      out.push_back(c);
    }
  }
  return out;
}

// Python's str.strip/lstrip/rstrip with a character set.
std::string_view StripChars(std::string_view s, std::string_view chars, bool left, bool right) {
  size_t begin = 0, end = s.size();
  if (left) {
    while (begin < end && chars.find(s[begin]) != std::string_view::npos) ++begin;
  }
  if (right) {
    while (end > begin && chars.find(s[end - 1]) != std::string_view::npos) --end;
  }
  return s.substr(begin, end - begin);
}

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }
bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A default system prompt is a string literal right after "<|im_start|>system\n" that runs to
// "<|im_end|>" without closing the literal (so "... + messages[0].content" is not one).
std::optional<std::string> FindDefaultSystemPrompt(std::string_view source) {
  constexpr std::string_view kHead = "<|im_start|>system";
  constexpr std::string_view kEnd = "<|im_end|>";
  for (size_t at = source.find(kHead); at != std::string_view::npos; at = source.find(kHead, at + 1)) {
    size_t pos = at + kHead.size();
    if (source.substr(pos, 2) == "\\n") {
      pos += 2;
    } else if (source.substr(pos, 1) == "\n") {
      pos += 1;
    } else {
      continue;
    }
    size_t end = source.find(kEnd, pos);
    if (end == std::string_view::npos) continue;
    std::string_view raw = source.substr(pos, end - pos);
    if (raw.empty() || raw.find_first_of("'\"{}") != std::string_view::npos) continue;
    std::string prompt;
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '\\' && i + 1 < raw.size()) {
        char e = raw[++i];
        prompt.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
      } else {
        prompt.push_back(raw[i]);
      }
    }
    return prompt;
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromTemplateText(std::string_view jinja_source) {
  std::string canonical = Canonical(jinja_source);
  bool chatml_markers = canonical.find("<|im_start|>") != std::string::npos &&
                        canonical.find("<|im_end|>") != std::string::npos;
  if (chatml_markers && canonical.find("enable_thinking") != std::string::npos &&
      canonical.find("<think>") != std::string::npos && canonical.find("</think>") != std::string::npos &&
      canonical.find("last_query_index") != std::string::npos) {
    return ChatTemplate(Family::kQwen3, std::nullopt);
  }
  // Plain ChatML writes every message with exactly this expression.
  for (std::string_view message : {"message['role']", "message.role"}) {
    std::string content = message == "message.role" ? "message.content" : "message['content']";
    std::string expression = absl::StrCat("'<|im_start|>'+", std::string(message), "+'\\n'+", content,
                                          "+'<|im_end|>'+'\\n'");
    std::string expression_joined = absl::StrCat("'<|im_start|>'+", std::string(message), "+'\\n'+", content,
                                                 "+'<|im_end|>\\n'");
    if (chatml_markers && canonical.find("<think>") == std::string::npos &&
        (canonical.find(expression) != std::string::npos ||
         canonical.find(expression_joined) != std::string::npos)) {
      return ChatTemplate(Family::kChatMl, FindDefaultSystemPrompt(jinja_source));
    }
  }
  return absl::InvalidArgumentError(kUnrecognised);
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromTokenizerConfig(const nlohmann::json& tokenizer_config) {
  auto it = tokenizer_config.is_object() ? tokenizer_config.find("chat_template") : tokenizer_config.end();
  if (!tokenizer_config.is_object() || it == tokenizer_config.end() || it->is_null()) {
    return absl::NotFoundError(
        "tokenizer_config.json has no chat_template, so this is not a chat model; pass the raw prompt "
        "text with --prompt instead");
  }
  if (it->is_string()) {
    auto parsed = FromTemplateText(it->get<std::string>());
    if (!parsed.ok()) return Annotate(parsed.status(), "tokenizer_config.json: key 'chat_template'");
    return parsed;
  }
  if (it->is_array()) {
    for (const auto& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        auto parsed = FromTemplateText(entry["template"].get<std::string>());
        if (!parsed.ok()) return Annotate(parsed.status(), "tokenizer_config.json: key 'chat_template' (default)");
        return parsed;
      }
    }
    return absl::InvalidArgumentError(
        "tokenizer_config.json: key 'chat_template' is a list without a template named \"default\"");
  }
  return absl::InvalidArgumentError(absl::StrCat("tokenizer_config.json: key 'chat_template' must be a string, found ",
                                                 it->type_name()));
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromModelDir(const std::string& model_dir) {
  std::filesystem::path dir(model_dir);
  std::error_code ec;
  std::filesystem::path config_path = dir / "tokenizer_config.json";
  std::filesystem::path jinja_path = dir / "chat_template.jinja";
  nlohmann::json config;
  if (std::filesystem::exists(config_path, ec)) {
    std::ifstream in(config_path);
    try {
      config = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("'", config_path.string(), "' is not valid JSON: ", e.what()));
    }
  }
  if (config.is_object() && config.contains("chat_template") && !config["chat_template"].is_null()) {
    auto parsed = FromTokenizerConfig(config);
    if (!parsed.ok()) return Annotate(parsed.status(), model_dir);
    return parsed;
  }
  if (std::filesystem::exists(jinja_path, ec)) {
    std::ifstream in(jinja_path);
    std::stringstream text;
    text << in.rdbuf();
    auto parsed = FromTemplateText(text.str());
    if (!parsed.ok()) return Annotate(parsed.status(), jinja_path.string());
    return parsed;
  }
  return absl::NotFoundError(absl::StrCat("model directory '", model_dir,
                                          "' has no chat template (neither tokenizer_config.json's chat_template "
                                          "nor chat_template.jinja), so this is not a chat model; pass the raw "
                                          "prompt text with --prompt instead"));
}

std::string ChatTemplate::Render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 bool enable_thinking) const {
  if (family_ == Family::kQwen3) return RenderQwen3(messages, add_generation_prompt, enable_thinking);
  return RenderChatMl(messages, add_generation_prompt);
}

std::string ChatTemplate::RenderChatMl(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && default_system_prompt_ && messages[0].role != "system") {
      out += "<|im_start|>system\n" + *default_system_prompt_ + "<|im_end|>\n";
    }
    out += "<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Qwen3's template (without tools), rule by rule.
std::string ChatTemplate::RenderQwen3(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                      bool enable_thinking) const {
  constexpr std::string_view kOpen = "<think>", kClose = "</think>";
  std::string out;
  if (!messages.empty() && messages[0].role == "system") {
    out += "<|im_start|>system\n" + messages[0].content + "<|im_end|>\n";
  }
  // The last user message that is not a wrapped tool response: thinking is kept only after it.
  size_t last_query = messages.empty() ? 0 : messages.size() - 1;
  for (size_t i = messages.size(); i-- > 0;) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" && !(StartsWith(m.content, "<tool_response>") && EndsWith(m.content, "</tool_response>"))) {
      last_query = i;
      break;
    }
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    bool last = i + 1 == messages.size();
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    } else if (m.role == "assistant") {
      std::string_view whole = m.content;
      std::string_view content = whole;
      std::string_view reasoning;
      if (whole.find(kClose) != std::string_view::npos) {
        // content.split('</think>')[-1].lstrip('\n') and
        // content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
        content = StripChars(whole.substr(whole.rfind(kClose) + kClose.size()), "\n", true, false);
        std::string_view head = StripChars(whole.substr(0, whole.find(kClose)), "\n", false, true);
        size_t open = head.rfind(kOpen);
        reasoning = StripChars(open == std::string_view::npos ? head : head.substr(open + kOpen.size()), "\n", true,
                               false);
      }
      out += "<|im_start|>assistant\n";
      if (i > last_query && (last || !reasoning.empty())) {
        out += "<think>\n";
        out += StripChars(reasoning, "\n", true, true);
        out += "\n</think>\n\n";
        out += StripChars(content, "\n", true, false);
      } else {
        out += content;
      }
      out += "<|im_end|>\n";
    } else if (m.role == "tool") {
      if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
      out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
      if (last || messages[i + 1].role != "tool") out += "<|im_end|>\n";
    }
    // Any other role is dropped, as the template does.
  }
  if (add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

}  // namespace asyncspade
