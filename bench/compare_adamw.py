#!/usr/bin/env python3
"""AdamW: muon's CPU backend against torch.optim.AdamW(fused=True), and both against the memory bound.

In one process, on 16M-element fp32 tensors allocated by torch (64-byte aligned, as torch's own),
with torch.set_num_threads equal to our OpenMP thread count:
  - ours through build/release/bench/libmuon_bench_adamw.so (ctypes; the Eigen backend's AdamW
    at every instruction-set level this CPU has), PyTorch's fused CPU AdamW and the bound (AdamW's
    own seven streams without its arithmetic), alternated step by step (--steps of each), so a
    machine whose memory bandwidth moves from second to second (this VM's does, by ±30%) cannot
    favour one side; each side's median step time is reported;
  - then, for reference, the bounds from build/release/bench/bench_optimizer: the STREAM triad
    with plain and with non-temporal stores (12 bytes per element, as STREAM counts), and
    BM_adamw_traffic (the bound above, in its own process).

Bytes: AdamW reads W, G, m, v and writes W, m, v: 28 bytes per element on both sides.

    python3 bench/compare_adamw.py [--build build/release] [--threads 2] [--steps 60]

Requires torch (tests/reference/requirements.txt pins the version).
"""
import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import time

import torch

N = 1 << 24
LEVELS = {0: "baseline", 1: "avx2", 2: "avx512"}


def bounds(bench, threads):
    out = subprocess.run(
        [bench, "--benchmark_filter=BM_stream_triad|BM_adamw_traffic", "--benchmark_format=json",
         "--benchmark_repetitions=10", "--benchmark_report_aggregates_only=true"],
        check=True, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)}).stdout
    found = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        seconds = b["real_time"] / 1e3
        if b["name"].startswith("BM_adamw_traffic"):
            found["AdamW traffic"] = 28 * N / seconds / 1e9
        else:
            kind = "triad, non-temporal" if "non_temporal:1" in b["name"] else "triad, plain"
            found[kind] = 12 * N / seconds / 1e9
    return found


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default="build/release")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=60)
    a = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # read by libgomp when the library loads
    lib = ctypes.CDLL(os.path.join(a.build, "bench", "libmuon_bench_adamw.so"))
    lib.muon_bench_adamw.restype = ctypes.c_int
    lib.muon_bench_adamw.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                                                              ctypes.c_float, ctypes.c_int]
    lib.muon_bench_adamw_traffic.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64]
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    theirs = torch.nn.Parameter(torch.randn(N))
    theirs.grad = torch.randn(N)
    opt = torch.optim.AdamW([theirs], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    w, g, m, v = theirs.detach().clone(), theirs.grad.clone(), torch.zeros(N), torch.zeros(N)
    levels = [k for k in LEVELS if lib.muon_bench_adamw(w.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(),
                                                         N, 1, 1e-3, 0.1, k) == 0]
    times = {"torch": []} | {LEVELS[k]: [] for k in levels} | {"traffic": []}
    step = 1
    for _ in range(a.steps):
        t = time.perf_counter()
        opt.step()
        times["torch"].append(time.perf_counter() - t)
        t = time.perf_counter()
        lib.muon_bench_adamw_traffic(w.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), N)
        times["traffic"].append(time.perf_counter() - t)
        for k in levels:
            step += 1
            t = time.perf_counter()
            lib.muon_bench_adamw(w.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), N, step, 1e-3, 0.1, k)
            times[LEVELS[k]].append(time.perf_counter() - t)
    median = {k: statistics.median(t[3:]) for k, t in times.items()}  # the first steps fault pages in
    best = LEVELS[levels[-1]]
    bound = 28 * N / median.pop("traffic") / 1e9
    found = bounds(os.path.join(a.build, "bench", "bench_optimizer"), a.threads)

    print(f"# {platform.processor() or platform.machine()}, {a.threads} threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, AdamW on {N:,} fp32 elements, {a.steps} alternated steps each")
    print(f"Bound, alternated with the steps: AdamW's traffic without its arithmetic, {bound:.1f} GB/s.\n")
    print("| AdamW | median step (ms) | GB/s | against torch fused | of the bound |")
    print("|---|---|---|---|---|")
    for name, seconds in median.items():
        label = f"ours, {name}" + (" (the level chosen at run time)" if name == best else "") if name != "torch" \
            else "torch.optim.AdamW(fused=True)"
        gbs = 28 * N / seconds / 1e9
        print(f"| {label} | {seconds * 1e3:.2f} | {gbs:.1f} | {median['torch'] / seconds:.2f}× | {gbs / bound:.0%} |")
    print("\n| bound from bench_optimizer (same threads, medians of 10, run after) | GB/s |\n|---|---|")
    for name, gbs in found.items():
        print(f"| {name} | {gbs:.1f} |")


if __name__ == "__main__":
    main()
