#!/usr/bin/env python3
"""Compares the C++ tokenizer (`asyncspade tokenize`) with Hugging Face `tokenizers` on one
tokenizer.json, over a few hundred varied strings: prose, code, digits, Unicode, whitespace runs,
and chat markup with special tokens. Encoding is compared id for id. Decoding (of the HF ids, and
with special tokens kept) is compared string for string.

Usage:
  tools/check_tokenizer_against_hf.py TOKENIZER [--binary build/bin/asyncspade] [--show 10]
TOKENIZER is a model directory or a tokenizer.json. Exit status: 0 when everything agrees, 1 on
any mismatch, 2 when it cannot run. Needs the PyPI package `tokenizers`.
"""

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys

try:
    from tokenizers import Tokenizer
except ImportError:
    sys.exit("check_tokenizer_against_hf.py needs the `tokenizers` package: pip install tokenizers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROSE = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "Reasoning models write thousands of tokens per answer; the KV cache dominates memory traffic.",
    "Don't stop believing. I'll be there. We've won. They're here. It's fine. She'd go. You'RE LOUD.",
    "  leading spaces", "trailing spaces   ", "multiple     inner     spaces", "tabs\tand\ttabs\t\t",
    "line one\nline two\n\nline four", "windows\r\nline endings\r\n", "\n\n\n", " ", "", "a",
    "Mr. O'Neil's dog's bone", "e-mail: someone@example.com, web: https://example.org/path?q=1&r=2#frag",
    "ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS #$%!",
    "Question: what is 2+2? Answer: 4.",
    "Let's think step by step. First, 17 × 23 = 391. Then 391 − 100 = 291. So the answer is 291.",
]

CODE = [
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) {\n  sum += x[i] * y[i];\n}\n",
    "#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; return v.size(); }",
    '{"name": "asyncspade", "version": "0.1.0", "list": [1, 2.5, -3e-4, null, true]}',
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name DESC LIMIT 10;",
    "$ cmake -S . -B build -G Ninja && cmake --build build -j2 2>&1 | tail -n 20",
    "    indented with four spaces\n\tand a tab\n        and eight",
    "x = [i**2 for i in range(10) if i % 2 == 0]  # squares of evens",
    "<html><body><div class=\"a\">Text &amp; more</div></body></html>",
    "fn main() -> Result<(), Box<dyn Error>> { println!(\"{:?}\", vec![1u8; 4]); Ok(()) }",
    "a==b!=c<=d>=e&&f||g<<h>>i+=j-=k*=l/=m",
]

DIGITS = [
    "0", "7", "42", "123", "2025", "1234567890", "3.14159265358979", "1,000,000", "1 000 000", "-273.15",
    "2025-10-07T12:34:56Z", "+1 (555) 010-9999", "0x7fffffff", "1e-6", "v1.2.3", "x86_64", "H2O", "CO2e",
    "Room 101, Floor 3", "99 bottles", "00000", "12ab34cd",
]

UNICODE = [
    "naïve café résumé", "Zürich Straße Größe", "¿Dónde está la biblioteca?", "ça va? oui, très bien",
    "日本語のテキストです。", "中文文本测试，你好世界！", "한국어 문장입니다.", "Привет, мир!", "Γειά σου Κόσμε",
    "مرحبا بالعالم", "שלום עולם", "हिन्दी पाठ", "ภาษาไทย", "Tiếng Việt có dấu",
    "emoji 👍🏽 🇫🇷 👨‍👩‍👧‍👦 🤖✨", "math ∑∫√∞ ≤ ≥ ≠ ± × ÷ → ⇒ ∀∃", "currency € £ ¥ ₹ ₿ $",
    "e\u0301 (combining acute) vs é", "non\u00a0breaking\u00a0space", "zero\u200bwidth\u200bspace",
    "full－width　ＡＢＣ１２３", "“smart quotes” and ‘single’ — em dash – en dash …", "ﬁ ligature, Å angstrom",
    "\u2028line separator\u2029paragraph separator", "🙂" * 5, "a\u0000b",
]

CHAT = [
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n",
    "<|im_start|><|im_end|>", "<|im_end|><|im_end|>\n", "text<|endoftext|>more text", "<|endoftext|>",
    "<|im_start", "im_start|>", "<|im_start|>user", " <|im_start|> spaced <|im_end|> ", "<<|im_start|>>",
    "<think>\nreasoning here\n</think>\n\nanswer", "<|endoftext|><|endoftext|><|endoftext|>",
    "<repo_name>asyncspade<file_sep>README.md", "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
]

FRAGMENTS = (PROSE[:8] + ["the", " the", "The", "  ", "\n", "\t", "123", "4", ".", ",", "!", "?", "'s", "'ll",
             "é", "日本", "👍", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "def ", "()", "{}", "[]", "->",
             "α", "β", "\u00a0", "ß", "İ", "ǅ", "Ⅻ", "½", "²", "١٢٣", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\r\n", "   \n"])


def strings(seed, count):
    """The fixed lists plus `count` random concatenations of fragments (deterministic for a seed)."""
    rng = random.Random(seed)
    out = PROSE + CODE + DIGITS + UNICODE + CHAT
    for _ in range(40):  # random digit strings, with separators
        out.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 24))))
        out.append(f"{rng.randint(0, 10**6)}.{rng.randint(0, 999):03d} {rng.choice(['kg', '%', 'USD', 'ms'])}")
    for _ in range(count):
        out.append("".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12))))
    return out


def find_binary(explicit):
    if explicit:
        return explicit
    if os.environ.get("ASYNCSPADE_BIN"):
        return os.environ["ASYNCSPADE_BIN"]
    candidates = glob.glob(os.path.join(REPO, "build*", "bin", "asyncspade"))
    if candidates:
        return max(candidates, key=os.path.getmtime)
    return shutil.which("asyncspade")


def run_cli(binary, tokenizer_path, lines, decode):
    command = [binary, "tokenize", "--tokenizer", tokenizer_path] + (["--decode"] if decode else [])
    stdin = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    proc = subprocess.run(command, input=stdin.encode("utf-8"), capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}: "
                          f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}")
    # Split on "\n" only: str.splitlines() would also split inside JSON strings holding U+2028,
    # U+0085 and the like, which JSON writers need not escape.
    out = [json.loads(line) for line in proc.stdout.decode("utf-8").split("\n") if line.strip()]
    if len(out) != len(lines):
        raise RuntimeError(f"{' '.join(command)} wrote {len(out)} lines for {len(lines)} inputs")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", help="model directory or tokenizer.json")
    parser.add_argument("--binary", help="the asyncspade binary (default: $ASYNCSPADE_BIN, newest build*/bin/asyncspade, "
                                         "or asyncspade on PATH)")
    parser.add_argument("--random", type=int, default=250, help="random fragment strings to add (default 250)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--show", type=int, default=10, help="mismatches to print")
    args = parser.parse_args()

    path = args.tokenizer
    json_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(json_path):
        print(f"check_tokenizer_against_hf.py: {json_path} does not exist", file=sys.stderr)
        return 2
    binary = find_binary(args.binary)
    if not binary or not os.path.isfile(binary):
        print("check_tokenizer_against_hf.py: no asyncspade binary found; build it (cmake --build build --target "
              "asyncspade) or pass --binary", file=sys.stderr)
        return 2

    hf = Tokenizer.from_file(json_path)
    texts = strings(args.seed, args.random)
    expected_ids = [hf.encode(t, add_special_tokens=False).ids for t in texts]
    try:
        ours = run_cli(binary, path, [{"text": t} for t in texts], decode=False)
        decoded = run_cli(binary, path, [{"ids": ids} for ids in expected_ids], decode=True)
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        print(f"check_tokenizer_against_hf.py: {e}", file=sys.stderr)
        return 2

    encode_bad, decode_bad = [], []
    for text, want, got in zip(texts, expected_ids, ours):
        if got.get("ids") != want:
            encode_bad.append((text, want, got.get("ids", got)))
    for ids, got in zip(expected_ids, decoded):
        want = hf.decode(ids, skip_special_tokens=False)
        if got.get("text") != want:
            decode_bad.append((ids, want, got.get("text", got)))

    n = len(texts)
    total_tokens = sum(len(ids) for ids in expected_ids)
    print(f"{json_path}: {n} strings, {total_tokens} tokens (HF tokenizers {__import__('tokenizers').__version__})")
    print(f"encode: {n - len(encode_bad)}/{n} agree")
    print(f"decode: {n - len(decode_bad)}/{n} agree")
    for text, want, got in encode_bad[:args.show]:
        print(f"  ENCODE {text!r}\n    hf:   {want}\n    ours: {got}")
    for ids, want, got in decode_bad[:args.show]:
        print(f"  DECODE {ids}\n    hf:   {want!r}\n    ours: {got!r}")
    return 1 if encode_bad or decode_bad else 0


if __name__ == "__main__":
    sys.exit(main())
