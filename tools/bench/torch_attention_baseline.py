#!/usr/bin/env python3
"""torch baseline for the dense decode attention benchmark (asyncspade-bench-attention).

Measures torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True) with
contiguous KV ([B, Hkv, N, d] bf16) and one query token per sequence ([B, Hq, 1, d]) on the same
shapes as the CUDA benchmark (Qwen3-8B heads: Hq 32, Hkv 8, d 128), plus a device-to-device copy
for the bandwidth reference. Timing: CUDA events, median of --reps runs after warm-up, L2 flushed
before every timed run. Bytes moved: K + V + q + out, as in the C++ benchmark.

    python3 tools/bench/torch_attention_baseline.py --json torch_attention.json
"""

import argparse
import json
import statistics
import sys

NUM_Q_HEADS = 32
NUM_KV_HEADS = 8
HEAD_DIM = 128
REFERENCE_TBPS = 4.28
DECODE_SHAPES = [(16, 32768), (1, 262144), (64, 4096), (32, 8192), (128, 2048)]
QUICK_SHAPES = [(4, 4096), (1, 16384)]


def median_us(torch, fn, warmup, reps, flush):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(reps):
        flush.fill_(i & 0xFF)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    args = parser.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("FAIL: torch is not installed", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("FAIL: no CUDA device visible to torch", file=sys.stderr)
        return 1

    device = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    copy_bytes = 1 << 30
    src = torch.ones(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_us = median_us(torch, lambda: dst.copy_(src), 3, 20, flush)
    copy_tbps = 2 * copy_bytes / (copy_us * 1e-6) / 1e12
    del src, dst
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; "
          f"device-to-device copy: {copy_tbps:.3f} TB/s (reference {REFERENCE_TBPS} TB/s)")
    print(f"{'kernel':<28} {'shape':<36} {'median_us':>11} {'bytes_MB':>10} {'TB/s':>8} "
          f"{'floor_us':>9} {'%_of_floor':>10}")

    results = []
    for batch, kv_len in (QUICK_SHAPES if args.quick else DECODE_SHAPES):
        gen = torch.Generator(device=device).manual_seed(batch * 1000003 + kv_len)
        q = torch.randn(batch, NUM_Q_HEADS, 1, HEAD_DIM, device=device, dtype=torch.bfloat16,
                        generator=gen)
        k = torch.randn(batch, NUM_KV_HEADS, kv_len, HEAD_DIM, device=device,
                        dtype=torch.bfloat16, generator=gen)
        v = torch.randn(batch, NUM_KV_HEADS, kv_len, HEAD_DIM, device=device,
                        dtype=torch.bfloat16, generator=gen)
        us = median_us(torch,
                       lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                       args.warmup, args.reps, flush)
        nbytes = 2.0 * batch * kv_len * NUM_KV_HEADS * HEAD_DIM * 2 + 2.0 * q.numel() * 2
        tbps = nbytes / (us * 1e-6) / 1e12
        floor_us = nbytes / (REFERENCE_TBPS * 1e12) * 1e6
        shape = f"B={batch} N={kv_len} Hq=32 Hkv=8 d=128"
        print(f"{'torch_sdpa_enable_gqa':<28} {shape:<36} {us:11.2f} {nbytes / 1e6:10.2f} "
              f"{tbps:8.3f} {floor_us:9.2f} {100 * floor_us / us:9.1f}%", flush=True)
        results.append({"kernel": "torch_sdpa_enable_gqa", "shape": shape, "num_seqs": batch,
                        "kv_len": kv_len, "median_us": us, "bytes": nbytes, "tbps": tbps,
                        "floor_us": floor_us, "fraction_of_floor": floor_us / us})
        del q, k, v
        torch.cuda.empty_cache()

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "torch_attention_baseline", "torch": torch.__version__,
                       "device": torch.cuda.get_device_name(),
                       "reference_bandwidth_tbps": REFERENCE_TBPS,
                       "measured_copy_tbps": copy_tbps, "results": results}, f, indent=2)
        print(f"wrote {args.json}")
    print("PASS: torch attention baseline completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
