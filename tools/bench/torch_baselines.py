#!/usr/bin/env python3
"""Torch references for the selection-kernel benchmarks, timed the same way on the same GPU.

    python3 tools/bench/torch_baselines.py [--json FILE] [--reps N] [--warmup N] [--no-l2-flush]

Measures, with CUDA events around each call (L2 flushed between repetitions, median over the
repetitions), on the shapes of `asyncspade-bench-kernels --full`:
  * torch.topk of 256 rows x 32768 fp32 scores, k = 2048 (the selector's top-k);
  * sparse decode attention the torch way: gather K/V rows of 4 sinks + 2048 selected + 64 recent
    positions per (sequence, KV head) out of a paged bf16 cache (index_select), then
    F.scaled_dot_product_attention with GQA; and the SDPA alone on pre-gathered K/V;
  * dense SDPA over the whole 32K context (what sparse attention replaces).
Prints a table and writes JSON with the same fields as the C++ benchmark.
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

PEAK_BYTES_PER_SECOND = 4.28e12


def time_us(fn, reps, warmup, flush):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    samples = []
    for i in range(reps):
        if flush is not None:
            flush.fill_(i & 0xFF)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(samples), min(samples)


def result(kernel, shape, median_us, min_us, bytes_moved):
    floor_us = bytes_moved / PEAK_BYTES_PER_SECOND * 1e6
    return {
        "kernel": kernel,
        "shape": shape,
        "median_us": median_us,
        "min_us": min_us,
        "bytes": bytes_moved,
        "achieved_tbps": bytes_moved / (median_us * 1e-6) / 1e12,
        "floor_us": floor_us,
        "percent_of_floor": 100.0 * floor_us / median_us,
    }


def bench_topk(args, flush):
    rows, length, k = 256, 32768, 2048
    scores = torch.randn(rows, length, device="cuda", dtype=torch.float32)
    med, low = time_us(lambda: torch.topk(scores, k, dim=-1, sorted=False), args.reps, args.warmup, flush)
    return [result("torch.topk", f"rows={rows} len={length} k={k}", med, low, rows * length * 4 + rows * k * 8)]


def bench_sparse_attention(args, flush):
    b, hq, hkv, d, page = 32, 32, 8, 128, 16
    kv_len, sinks, recent = 32768, 4, 64
    blocks_per_seq = kv_len // page
    num_blocks = b * blocks_per_seq
    gen = torch.Generator(device="cuda").manual_seed(0)
    k_cache = torch.randn(num_blocks, hkv, page, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v_cache = torch.randn(num_blocks, hkv, page, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    block_table = torch.randperm(num_blocks, device="cuda", generator=gen).view(b, blocks_per_seq)
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    out = []
    for budget in (1024, 2048, 4096):
        # Distinct random positions between the sinks and the recent window, per (sequence, KV head).
        middle = torch.rand(b, hkv, kv_len - sinks - recent, device="cuda", generator=gen).argsort(dim=-1)
        selected = middle[..., :budget] + sinks
        positions = torch.cat([
            torch.arange(sinks, device="cuda").expand(b, hkv, sinks), selected,
            torch.arange(kv_len - recent, kv_len, device="cuda").expand(b, hkv, recent)
        ], dim=-1)  # [b, hkv, n]
        n = positions.shape[-1]
        heads = torch.arange(hkv, device="cuda").view(1, hkv, 1)
        blocks = torch.gather(block_table.view(b, 1, blocks_per_seq).expand(b, hkv, blocks_per_seq), 2,
                              positions // page)
        rows = ((blocks * hkv + heads) * page + positions % page).reshape(-1)  # rows of [*, d]
        k_flat = k_cache.view(-1, d)
        v_flat = v_cache.view(-1, d)
        scale = d**-0.5

        def gather_and_attend():
            k = k_flat.index_select(0, rows).view(b, hkv, n, d)
            v = v_flat.index_select(0, rows).view(b, hkv, n, d)
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)

        k_pre = k_flat.index_select(0, rows).view(b, hkv, n, d)
        v_pre = v_flat.index_select(0, rows).view(b, hkv, n, d)
        shape = f"B={b} Hq={hq} Hkv={hkv} d={d} kv_len={kv_len} budget={budget} S={sinks} R={recent}"
        must_move = b * hkv * n * (2 * d * 2 + 4) + 2 * b * hq * d * 2
        med, low = time_us(gather_and_attend, args.reps, args.warmup, flush)
        out.append(result("torch gather+sdpa", shape, med, low, must_move))
        med, low = time_us(
            lambda: F.scaled_dot_product_attention(q, k_pre, v_pre, scale=scale, enable_gqa=True), args.reps,
            args.warmup, flush)
        out.append(result("torch sdpa (pre-gathered)", shape, med, low, b * hkv * n * 2 * d * 2 + 2 * b * hq * d * 2))

    # Dense decode attention over the whole context, contiguous K/V: what the budget replaces.
    k_dense = k_cache.view(b, blocks_per_seq, hkv, page, d).permute(0, 2, 1, 3, 4).reshape(b, hkv, kv_len, d)
    v_dense = v_cache.view(b, blocks_per_seq, hkv, page, d).permute(0, 2, 1, 3, 4).reshape(b, hkv, kv_len, d)
    del k_cache, v_cache
    med, low = time_us(lambda: F.scaled_dot_product_attention(q, k_dense, v_dense, enable_gqa=True), args.reps,
                       args.warmup, flush)
    out.append(result("torch sdpa dense", f"B={b} Hq={hq} Hkv={hkv} d={d} kv_len={kv_len}", med, low,
                      b * hkv * kv_len * 2 * d * 2 + 2 * b * hq * d * 2))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-l2-flush", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_baselines.py: no CUDA device visible; run it on the GPU machine")
    flush = None if args.no_l2_flush else torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    results = bench_topk(args, flush) + bench_sparse_attention(args, flush)
    print(f"\n{'kernel':<28} {'shape':<64} {'median us':>10} {'min us':>9} {'TB/s':>6} {'% floor':>8}")
    for r in results:
        print(f"{r['kernel']:<28} {r['shape']:<64} {r['median_us']:>10.1f} {r['min_us']:>9.1f} "
              f"{r['achieved_tbps']:>6.2f} {r['percent_of_floor']:>7.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "peak_bytes_per_second": PEAK_BYTES_PER_SECOND, "reps": args.reps, "warmup": args.warmup,
                       "l2_flushed": flush is not None, "results": results}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
