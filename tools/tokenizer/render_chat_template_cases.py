#!/usr/bin/env python3
"""Renders chat conversations with the real Jinja chat templates, the way HF transformers'
apply_chat_template does (jinja2, trim_blocks, lstrip_blocks), and writes them as the reference
for tests/unit/common/tokenizer/chat_template_test.cc.

    python3 tools/tokenizer/render_chat_template_cases.py \
        --qwen3-config /work/shared/tokenizers/qwen3/tokenizer_config.json \
        --smollm2-config tests/fixtures/tokenizer/smollm2_tokenizer_config.json \
        --out tests/fixtures/tokenizer/chat_template_cases.json
"""
import argparse
import json

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "What is 2+2?"}],
    "system_and_user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
    ],
    "history_with_think_blocks": [
        {"role": "system", "content": "Be careful."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "<think>\nreasoning one\n</think>\n\nFirst answer."},
        {"role": "user", "content": "Second question?"},
        {"role": "assistant", "content": "<think>\n\nreasoning two\n\n</think>\n\n\nSecond answer."},
    ],
    "think_after_last_query": [
        {"role": "user", "content": "Solve it."},
        {"role": "assistant", "content": "<think>step 1\nstep 2</think>Answer: 4"},
    ],
    "history_without_think": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "tool_responses": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "<think>need tool</think>Calling the tool."},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "{\"wind\": 3}"},
    ],
    "unicode_content": [{"role": "user", "content": "Übersetze: 你好，世界！ 😀"}],
    "empty": [],
}


def render(template, messages, add_generation_prompt, enable_thinking):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(jinja2.exceptions.TemplateError(message))
    kwargs = {"messages": messages, "add_generation_prompt": add_generation_prompt}
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return env.from_string(template).render(**kwargs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qwen3-config", required=True)
    parser.add_argument("--smollm2-config", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    templates = {
        "qwen3": json.load(open(args.qwen3_config))["chat_template"],
        "smollm2": json.load(open(args.smollm2_config))["chat_template"],
    }
    cases = []
    for family, template in templates.items():
        for name, messages in CONVERSATIONS.items():
            if family == "smollm2" and any(m["role"] == "tool" for m in messages):
                continue  # plain ChatML has no tool convention
            for add_generation_prompt in (True, False):
                for enable_thinking in ((True, False) if family == "qwen3" else (True,)):
                    if not messages and family == "qwen3":
                        continue  # Qwen3's template indexes messages[0]
                    cases.append({
                        "template": family,
                        "conversation": name,
                        "messages": messages,
                        "add_generation_prompt": add_generation_prompt,
                        "enable_thinking": enable_thinking,
                        "expected": render(template, messages, add_generation_prompt, enable_thinking),
                    })
    with open(args.out, "w") as f:
        json.dump({"generated_by": "tools/tokenizer/render_chat_template_cases.py (jinja2 " + jinja2.__version__ + ")",
                   "cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
