#!/usr/bin/env python3
"""Checks an asyncspade OpenAI-compatible HTTP endpoint with the official `openai` Python client.

    python3 tests/integration/python/openai_client_check.py --base-url http://127.0.0.1:8000

Runs completions and chat completions, whole and streamed (with stream_options.include_usage), and
one request the server must refuse (n=2), and asserts that every answer is well formed: non-empty
text, a finish reason, consistent usage. Prints one line per check; exits 1 with the reason on the
first failure, 2 when the `openai` package is missing (pip install openai).
"""
import argparse
import sys

FINISH_REASONS = ("stop", "length")


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def check_usage(usage, max_tokens, where):
    check(usage is not None, f"{where}: no usage in the response")
    check(usage.prompt_tokens > 0, f"{where}: usage.prompt_tokens is {usage.prompt_tokens}, expected > 0")
    check(usage.completion_tokens > 0,
          f"{where}: usage.completion_tokens is {usage.completion_tokens}, expected > 0")
    check(usage.completion_tokens <= max_tokens,
          f"{where}: usage.completion_tokens is {usage.completion_tokens}, above max_tokens={max_tokens}")
    check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
          f"{where}: usage.total_tokens {usage.total_tokens} != prompt {usage.prompt_tokens} + completion "
          f"{usage.completion_tokens}")


def check_completions(client, model, args):
    where = "completions"
    response = client.completions.create(model=model, prompt=args.prompt, max_tokens=args.max_tokens,
                                         temperature=0)
    check(response.object == "text_completion", f"{where}: object is {response.object!r}")
    check(response.id, f"{where}: empty id")
    check(response.model == model, f"{where}: model is {response.model!r}, expected {model!r}")
    check(len(response.choices) == 1, f"{where}: {len(response.choices)} choices, expected 1")
    choice = response.choices[0]
    check(choice.text, f"{where}: empty text")
    check(choice.finish_reason in FINISH_REASONS, f"{where}: finish_reason is {choice.finish_reason!r}")
    check_usage(response.usage, args.max_tokens, where)
    print(f"ok: {where}: {response.usage.completion_tokens} tokens, finish_reason={choice.finish_reason}, "
          f"text={choice.text[:40]!r}")
    return choice.text


def check_completions_stream(client, model, args):
    where = "completions (stream)"
    stream = client.completions.create(model=model, prompt=args.prompt, max_tokens=args.max_tokens,
                                       temperature=0, stream=True, stream_options={"include_usage": True})
    text, finish_reasons, usage, chunks = "", [], None, 0
    for chunk in stream:
        chunks += 1
        check(chunk.object == "text_completion", f"{where}: chunk object is {chunk.object!r}")
        if chunk.usage is not None:
            check(usage is None, f"{where}: usage sent twice")
            usage = chunk.usage
            check(not chunk.choices, f"{where}: the usage chunk carries choices")
            continue
        check(usage is None, f"{where}: a chunk after the usage chunk")
        check(len(chunk.choices) == 1, f"{where}: {len(chunk.choices)} choices in a chunk")
        text += chunk.choices[0].text or ""
        if chunk.choices[0].finish_reason is not None:
            finish_reasons.append(chunk.choices[0].finish_reason)
    check(text, f"{where}: no text streamed")
    check(len(finish_reasons) == 1 and finish_reasons[0] in FINISH_REASONS,
          f"{where}: finish reasons {finish_reasons}, expected exactly one of {FINISH_REASONS}")
    check_usage(usage, args.max_tokens, where)
    print(f"ok: {where}: {chunks} chunks, {usage.completion_tokens} tokens, finish_reason={finish_reasons[0]}")
    return text


def chat_extra_body(args):
    if args.disable_thinking:
        return {"chat_template_kwargs": {"enable_thinking": False}}
    return None


def check_chat(client, model, args):
    where = "chat"
    response = client.chat.completions.create(model=model, messages=messages(args),
                                              max_completion_tokens=args.max_tokens, temperature=0,
                                              extra_body=chat_extra_body(args))
    check(response.object == "chat.completion", f"{where}: object is {response.object!r}")
    check(len(response.choices) == 1, f"{where}: {len(response.choices)} choices, expected 1")
    choice = response.choices[0]
    check(choice.message.role == "assistant", f"{where}: role is {choice.message.role!r}")
    check(choice.message.content, f"{where}: empty content")
    check(choice.finish_reason in FINISH_REASONS, f"{where}: finish_reason is {choice.finish_reason!r}")
    check_usage(response.usage, args.max_tokens, where)
    print(f"ok: {where}: {response.usage.completion_tokens} tokens, finish_reason={choice.finish_reason}, "
          f"content={choice.message.content[:40]!r}")


def check_chat_stream(client, model, args):
    where = "chat (stream)"
    stream = client.chat.completions.create(model=model, messages=messages(args),
                                            max_completion_tokens=args.max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body=chat_extra_body(args))
    content, roles, finish_reasons, usage = "", [], [], None
    for chunk in stream:
        check(chunk.object == "chat.completion.chunk", f"{where}: chunk object is {chunk.object!r}")
        if chunk.usage is not None:
            usage = chunk.usage
            continue
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        content += delta.content or ""
        if chunk.choices[0].finish_reason is not None:
            finish_reasons.append(chunk.choices[0].finish_reason)
    check(roles == ["assistant"], f"{where}: role deltas {roles}, expected one 'assistant' first")
    check(content, f"{where}: no content streamed")
    check(len(finish_reasons) == 1 and finish_reasons[0] in FINISH_REASONS,
          f"{where}: finish reasons {finish_reasons}")
    check_usage(usage, args.max_tokens, where)
    print(f"ok: {where}: {usage.completion_tokens} tokens, finish_reason={finish_reasons[0]}")


def check_refusal(client, model, args, openai):
    where = "refusal (n=2)"
    try:
        client.completions.create(model=model, prompt=args.prompt, max_tokens=args.max_tokens, n=2)
    except openai.BadRequestError as error:
        check(error.status_code == 400, f"{where}: status {error.status_code}")
        body = error.body if isinstance(error.body, dict) else {}
        check(body.get("param") == "n", f"{where}: error param is {body.get('param')!r}, expected 'n'")
        print(f"ok: {where}: 400 {body.get('message')!r}")
        return
    raise CheckFailed(f"{where}: the server accepted n=2")


def messages(args):
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": args.chat_prompt}]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="the server, e.g. http://127.0.0.1:8000 (/v1 is added "
                                                           "when missing)")
    parser.add_argument("--model", help="the model name to send (default: the first of GET /v1/models)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--chat-prompt", default="Name three colors.")
    parser.add_argument("--disable-thinking", action="store_true",
                        help="send chat_template_kwargs.enable_thinking=false (Qwen3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = parser.parse_args()

    try:
        import openai
    except ImportError:
        print("openai_client_check: the `openai` Python package is not installed: pip install openai",
              file=sys.stderr)
        return 2

    base_url = args.base_url.rstrip("/")
    if not base_url.endswith("/v1"):
        base_url += "/v1"
    client = openai.OpenAI(base_url=base_url, api_key="asyncspade-needs-no-key", timeout=args.timeout,
                           max_retries=0)
    try:
        models = [m.id for m in client.models.list().data]
        check(models, "GET /v1/models lists no model")
        model = args.model or models[0]
        check(model in models, f"model {model!r} is not among {models}")
        print(f"ok: models: {models}")
        check_completions(client, model, args)
        check_completions_stream(client, model, args)
        check_chat(client, model, args)
        check_chat_stream(client, model, args)
        check_refusal(client, model, args, openai)
    except CheckFailed as failure:
        print(f"openai_client_check: FAILED: {failure}", file=sys.stderr)
        return 1
    except openai.APIConnectionError as error:
        print(f"openai_client_check: FAILED: cannot reach {base_url}: {error}", file=sys.stderr)
        return 1
    except openai.APIError as error:
        print(f"openai_client_check: FAILED: the server answered an error: {error}", file=sys.stderr)
        return 1
    print("openai_client_check: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
