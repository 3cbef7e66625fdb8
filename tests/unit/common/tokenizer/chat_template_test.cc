// ChatTemplate against conversations rendered by the real Jinja templates
// (tests/fixtures/tokenizer/chat_template_cases.json, written by
// tools/tokenizer/render_chat_template_cases.py), plus the rules spelled out.
#include "common/tokenizer/chat_template.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/common/tokenizer/test_data.h"

namespace asyncspade {
namespace {

std::string FixturePath(const std::string& name) { return testing::SourceDir() + "/tests/fixtures/tokenizer/" + name; }

ChatTemplate LoadQwen3() {
  auto loaded = ChatTemplate::FromModelDir(testing::Qwen3TokenizerDir());
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  return *loaded;
}

ChatTemplate LoadSmolLm2() {
  auto loaded = ChatTemplate::FromTokenizerConfig(testing::ReadJson(FixturePath("smollm2_tokenizer_config.json")));
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  return *loaded;
}

bool HaveQwen3() { return testing::Exists(testing::Qwen3TokenizerDir() + "/tokenizer_config.json"); }

TEST(ChatTemplateTest, MatchesJinjaRenderings) {
  if (!HaveQwen3()) GTEST_SKIP() << "Qwen3 tokenizer_config.json not found under " << testing::Qwen3TokenizerDir();
  ChatTemplate qwen3 = LoadQwen3();
  ChatTemplate smollm2 = LoadSmolLm2();
  EXPECT_EQ(qwen3.family(), ChatTemplate::Family::kQwen3);
  EXPECT_EQ(smollm2.family(), ChatTemplate::Family::kChatMl);
  auto cases = testing::ReadJson(FixturePath("chat_template_cases.json"))["cases"];
  ASSERT_GE(cases.size(), 30u);
  for (const auto& c : cases) {
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    const ChatTemplate& tmpl = c["template"] == "qwen3" ? qwen3 : smollm2;
    EXPECT_EQ(tmpl.Render(messages, c["add_generation_prompt"], c["enable_thinking"]), c["expected"].get<std::string>())
        << c["template"] << " / " << c["conversation"] << " add_generation_prompt=" << c["add_generation_prompt"]
        << " enable_thinking=" << c["enable_thinking"];
  }
}

TEST(ChatTemplateTest, Qwen3ThinkingSwitch) {
  if (!HaveQwen3()) GTEST_SKIP() << "Qwen3 tokenizer_config.json not found under " << testing::Qwen3TokenizerDir();
  ChatTemplate qwen3 = LoadQwen3();
  std::vector<ChatMessage> messages = {{"system", "S"}, {"user", "Q"}};
  EXPECT_EQ(qwen3.Render(messages, true, true),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(qwen3.Render(messages, true, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
            "<think>\n\n</think>\n\n");
  // Without a generation prompt the switch has no effect.
  EXPECT_EQ(qwen3.Render(messages, false, false), qwen3.Render(messages, false, true));
}

TEST(ChatTemplateTest, Qwen3DropsThinkingBeforeLastQuery) {
  if (!HaveQwen3()) GTEST_SKIP() << "Qwen3 tokenizer_config.json not found under " << testing::Qwen3TokenizerDir();
  ChatTemplate qwen3 = LoadQwen3();
  std::vector<ChatMessage> messages = {{"user", "A?"},
                                       {"assistant", "<think>old thoughts</think>\n\nold answer"},
                                       {"user", "B?"},
                                       {"assistant", "<think>\nnew thoughts\n</think>new answer"}};
  std::string rendered = qwen3.Render(messages, false, true);
  EXPECT_EQ(rendered.find("old thoughts"), std::string::npos);
  EXPECT_NE(rendered.find("<|im_start|>assistant\nold answer<|im_end|>"), std::string::npos);
  EXPECT_NE(rendered.find("<|im_start|>assistant\n<think>\nnew thoughts\n</think>\n\nnew answer<|im_end|>"),
            std::string::npos);
}

TEST(ChatTemplateTest, SmolLm2DefaultSystemPromptComesFromTheTemplate) {
  ChatTemplate smollm2 = LoadSmolLm2();
  ASSERT_TRUE(smollm2.default_system_prompt().has_value());
  EXPECT_EQ(*smollm2.default_system_prompt(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(smollm2.Render({{"user", "Hello"}}, true, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(smollm2.Render({{"system", "Be brief."}, {"user", "Hello"}}, false, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n");
  // A template with a different default prompt yields that prompt, not SmolLM's.
  auto qwen25 = ChatTemplate::FromTemplateText(
      "{%- for message in messages %}{%- if loop.first and messages[0]['role'] != 'system' %}"
      "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
      "{%- endif %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
      "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}");
  ASSERT_TRUE(qwen25.ok()) << qwen25.status();
  EXPECT_EQ(qwen25->default_system_prompt(), "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
}

TEST(ChatTemplateTest, UnknownTemplateIsAnErrorThatSuggestsPrompt) {
  auto llama3 = ChatTemplate::FromTemplateText(
      "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
      "{{ message['content'] }}<|eot_id|>{% endfor %}");
  ASSERT_FALSE(llama3.ok());
  EXPECT_NE(llama3.status().message().find("not recognised"), std::string::npos) << llama3.status();
  EXPECT_NE(llama3.status().message().find("--prompt"), std::string::npos) << llama3.status();

  auto none = ChatTemplate::FromTokenizerConfig(nlohmann::json{{"eos_token", "</s>"}});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(none.status().message().find("--prompt"), std::string::npos) << none.status();

  // stories260K is a base model: its directory has no chat template.
  if (testing::Exists(testing::Stories260KDir())) {
    auto base = ChatTemplate::FromModelDir(testing::Stories260KDir());
    ASSERT_FALSE(base.ok());
    EXPECT_NE(base.status().message().find("--prompt"), std::string::npos) << base.status();
  }
}

}  // namespace
}  // namespace asyncspade
