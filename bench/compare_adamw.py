#!/usr/bin/env python3
"""AdamW: muon's CPU backend against torch.optim.AdamW(fused=True), and both against the memory bound.

Runs build/release/bench/bench_optimizer (BM_adamw at every instruction-set level this CPU has,
and BM_stream_triad with plain and non-temporal stores) and then PyTorch's fused CPU AdamW on
the same 16M-element tensor with torch.set_num_threads equal to our OpenMP thread count, all in
one invocation; --rounds alternates the two sides that many times, so a noisy machine shows in
the spread instead of in one side's favour. Each side reports the best time of its round.

Bytes: AdamW reads W, G, m, v and writes W, m, v: 28 bytes per element on both sides. The bound
is the better of the two STREAM triads (12 bytes per element as STREAM counts it; the
non-temporal one moves exactly that).

    python3 bench/compare_adamw.py [--bench build/release/bench/bench_optimizer] [--threads 2] [--rounds 3]

Requires torch (tests/reference/requirements.txt pins the version).
"""
import argparse
import json
import os
import platform
import subprocess
import time

import torch

N = 1 << 24
LEVELS = {0: "baseline", 1: "avx2", 2: "avx512"}


def ours(bench, threads):
    out = subprocess.run(
        [bench, "--benchmark_filter=BM_adamw|BM_stream_triad", "--benchmark_format=json",
         "--benchmark_repetitions=5", "--benchmark_min_time=0.5"],
        check=True, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)}).stdout
    adamw, triad = {}, {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("run_type") != "iteration" or b.get("error_occurred"):
            continue
        args = dict(part.split(":") for part in b["name"].split("/")[1:] if ":" in part)
        seconds = b["real_time"] / 1e3
        if b["name"].startswith("BM_adamw"):
            level = LEVELS[int(args["isa"])]
            adamw[level] = min(adamw.get(level, float("inf")), seconds)
        else:
            kind = "non-temporal" if args["non_temporal"] == "1" else "plain"
            triad[kind] = min(triad.get(kind, float("inf")), seconds)
    return adamw, triad


def torch_fused(repeats):
    p = torch.nn.Parameter(torch.randn(N))
    p.grad = torch.randn(N)
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    for _ in range(3):
        opt.step()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bench", default="build/release/bench/bench_optimizer")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"# {platform.processor() or platform.machine()}, {a.threads} threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, AdamW on {N:,} fp32 elements")
    print("| round | ours, best level (ms) | level | torch fused (ms) | ours / torch speed | ours GB/s "
          "| triad plain / non-temporal GB/s | ours / bound |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(a.rounds):
        adamw, triad = ours(a.bench, a.threads)
        theirs = torch_fused(20)
        level = min(adamw, key=adamw.get)
        mine = adamw[level]
        gbs = 28 * N / mine / 1e9
        tp, tn = (12 * N / triad[k] / 1e9 for k in ("plain", "non-temporal"))
        others = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in sorted(adamw.items()) if k != level)
        print(f"| {r + 1} | {mine * 1e3:.2f} ({others}) | {level} | {theirs * 1e3:.2f} | {theirs / mine:.2f}× "
              f"| {gbs:.1f} | {tp:.1f} / {tn:.1f} | {gbs / max(tp, tn):.0%} |", flush=True)


if __name__ == "__main__":
    main()
