#!/usr/bin/env python3
"""Cross-checks `asyncspade tokenize` against HF `tokenizers` (pip install tokenizers) on random
strings: encode (no special tokens) and decode (special tokens kept) must agree exactly.

    python3 tools/tokenizer/crosscheck_hf.py --binary build/bin/asyncspade \
        --tokenizer /work/shared/tokenizers/qwen3 --tokenizer /work/shared/models/stories260K -n 20000

With --variants DIR it also writes and checks tokenizers derived from the two shared ones, to
cover components those two do not use: SmolLM2's pre-tokenizer (Digits + ByteLevel with the GPT-2
regex), Llama-3's (Split with \\p{N}{1,3}, ignore_merges), ByteLevel with add_prefix_space, NFKC +
Lowercase, lstrip/rstrip/single_word added tokens, and Metaspace pre-tokenizers and decoders.

Prints, per tokenizer, how many strings agree and the first disagreements. Exit code 1 on any
disagreement.
"""
import argparse
import json
import os
import random
import subprocess
import sys

from tokenizers import Tokenizer

# Characters that exercise the pre-tokenizer regexes, normalization and byte fallback.
POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list(" \t\n\r  .,;:!?'\"`-_()[]{}<>/\\|@#$%^&*+=~")
    + ["\u00a0", "\u3000", "\u2028", "\u2029", "\u0085", "\u200b", "\u200d", "\ufeff", "\u00ad"]
    + ["\u00e9", "e\u0301", "\u00f1", "\u00df", "\u0130", "\u017f", "\u212a", "\u00c5", "A\u030a", "\ufb01"]
    + ["\u4e2d", "\u6587", "\u65e5", "\u672c", "\u3042", "\u30a2", "\ud55c", "\u1100\u1161", "\u0905", "\u093f"]
    + ["\u0627", "\u0644", "\u05d0", "\u0e01", "\u0434", "\u0416", "\u03a3", "\u03c2", "\u2581", "\u2014"]
    + ["\U0001f600", "\U0001f468\u200d\U0001f469", "\u00bd", "\u2167", "\u2460", "\u0663", "\uff11", "\u00b2"]
    + ["'s", "'T", "'re", "'ve", "'M", "'ll", "'d", "n't", "\u2019s"]
    + ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>", "<s>", "</s>", "<unk>", "<|im_"]
    + ["    ", "\n\n", "\r\n", " \n ", "\t\t"]
)
WORDS = "the quick brown fox jumps over lazy dog Lily Ben park ball happy sad because once upon time".split()


def random_text(rng):
    kind = rng.random()
    if kind < 0.45:
        return "".join(rng.choice(POOL) for _ in range(rng.randint(0, 40)))
    if kind < 0.8:
        words = [rng.choice(WORDS) if rng.random() < 0.8 else rng.choice(POOL) for _ in range(rng.randint(1, 30))]
        seps = [" ", " ", " ", "  ", "\n", ", ", ". ", ""]
        return "".join(w + rng.choice(seps) for w in words)
    # Digit and whitespace soups (number splitting, \s+(?!\S)).
    return "".join(rng.choice(["1", "23", "456", "7890", " ", "  ", "\n", "\t", ".", ",", "x"]) for _ in range(rng.randint(1, 30)))


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_variants(qwen3_json, stories_json, out_dir):
    """Derived tokenizer.json files; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    qwen3 = json.load(open(qwen3_json))
    stories = json.load(open(stories_json))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    variants = {}
    smollm2 = dict(qwen3, normalizer=None, decoder=byte_level, post_processor=byte_level)
    smollm2["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, dict(byte_level, use_regex=True)]}
    variants["smollm2_style"] = smollm2
    llama3 = dict(qwen3, model=dict(qwen3["model"], ignore_merges=True))
    llama3["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False}, byte_level]}
    variants["llama3_style"] = llama3
    gpt2 = dict(qwen3, pre_tokenizer=dict(byte_level, add_prefix_space=True, use_regex=True))
    gpt2["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}
    added = [dict(t) for t in qwen3["added_tokens"]]
    for t in added:
        if t["content"] == "<|im_end|>":
            t["rstrip"] = True
        if t["content"] == "<think>":
            t["lstrip"] = True
        if t["content"] == "<tool_call>":
            t["single_word"] = True
        if t["content"] == "</think>":
            t["normalized"] = True
    gpt2["added_tokens"] = added
    variants["gpt2_prefix_nfkc_lower_stripped_added"] = gpt2
    sp_decoder = stories["decoder"]
    variants["llama2_metaspace_first"] = dict(stories, normalizer=None, pre_tokenizer={
        "type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}, decoder=sp_decoder)
    variants["metaspace_split_always"] = dict(stories, normalizer=None, pre_tokenizer={
        "type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        decoder={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True})
    paths = []
    for name, doc in variants.items():
        path = os.path.join(out_dir, name + ".json")
        with open(path, "w") as f:
            json.dump(doc, f, ensure_ascii=False)
        paths.append(path)
    return paths


def run_cli(binary, tokenizer, requests, decode):
    args = [binary, "tokenize", "--tokenizer", tokenizer] + (["--decode"] if decode else [])
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests)
    proc = subprocess.run(args, input=payload.encode(), capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return [json.loads(line) for line in proc.stdout.decode().split("\n") if line]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="path of the built asyncspade binary")
    parser.add_argument("--tokenizer", action="append", default=[], help="tokenizer.json or model directory")
    parser.add_argument("-n", type=int, default=10000, help="random strings per tokenizer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", metavar="DIR",
                        help="also check tokenizers derived from the shared Qwen3 and stories260K ones, written to DIR")
    parser.add_argument("--shared", default="/work/shared", help="shared data directory (for --variants)")
    args = parser.parse_args()
    paths = list(args.tokenizer)
    if args.variants:
        paths += write_variants(os.path.join(args.shared, "tokenizers/qwen3/tokenizer.json"),
                                os.path.join(args.shared, "models/stories260K/tokenizer.json"), args.variants)
    failed = False
    for path in paths:
        json_path = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        hf = Tokenizer.from_file(json_path)
        rng = random.Random(args.seed)
        texts = [random_text(rng) for _ in range(args.n)]
        ours = run_cli(args.binary, path, [{"text": t} for t in texts], decode=False)
        bad = [(t, o["ids"], hf.encode(t, add_special_tokens=False).ids) for t, o in zip(texts, ours)
               if o["ids"] != hf.encode(t, add_special_tokens=False).ids]
        vocab = hf.get_vocab_size(with_added_tokens=True)
        id_lists = [[rng.randrange(vocab + 5) for _ in range(rng.randint(0, 12))] for _ in range(args.n)]
        decoded = run_cli(args.binary, path, [{"ids": ids} for ids in id_lists], decode=True)
        bad_decode = [(ids, d["text"], hf.decode(ids, skip_special_tokens=False)) for ids, d in zip(id_lists, decoded)
                      if d["text"] != hf.decode(ids, skip_special_tokens=False)]
        print(f"{path}: encode {len(texts) - len(bad)}/{len(texts)} agree, "
              f"decode {len(id_lists) - len(bad_decode)}/{len(id_lists)} agree")
        for text, got, want in bad[:5]:
            print(f"  encode {json.dumps(text, ensure_ascii=False)}\n    ours {got}\n    hf   {want}")
        for ids, got, want in bad_decode[:5]:
            print(f"  decode {ids}\n    ours {json.dumps(got, ensure_ascii=False)}\n    hf   {json.dumps(want, ensure_ascii=False)}")
        failed |= bool(bad or bad_decode)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
