#!/usr/bin/env python3
"""Newton–Schulz: muon's Eigen backend against PyTorch's own NS code, same shapes, same threads.

Runs build/release/bench/bench_optimizer (Google Benchmark, JSON; symmetric products, fp32 and,
where oneDNN is built in, bf16) and then torch.optim._muon._zeropower_via_newtonschulz (torch's
Muon NS, which iterates in bf16) on the same shapes with torch.set_num_threads equal to our
OpenMP thread count. Both sides report the best of three runs. For the fp32 peer the same torch
function runs with its bf16 cast made a no-op, so the code path is torch's own. The 8-expert
stack is 8 calls of torch's function (torch.optim.Muon takes only 2-D matrices).

The headline column compares what each library runs by default: our automatic precision (bf16
where the CPU has bf16 instructions, fp32 elsewhere) against torch.optim.Muon's bf16 NS.

    python3 bench/compare_ns.py [--bench build/release/bench/bench_optimizer] [--threads 2] [--bf16]

torch's bf16 NS runs by default where the CPU has bf16 instructions (AVX512_BF16 or AMX); on
other CPUs it is opt-in (--bf16): there torch multiplies bf16 at about 1.3 GFLOP/s (measured on
AVX2), so one 2048×2048 NS takes minutes.

Requires torch (tests/reference/requirements.txt pins the version).
"""
import argparse
import json
import os
import platform
import subprocess
import time

import torch
from torch.optim import _muon

SHAPES = [(1, 2048, 2048), (1, 3072, 2048), (1, 576, 2048), (1, 4096, 512), (1, 1408, 2048),
          (1, 2048, 1408), (8, 1408, 2048)]
KELLER = (3.4445, -4.7750, 2.0315)


def cpu_has_bf16():
    flags = open("/proc/cpuinfo").read()
    return " avx512_bf16" in flags or " amx_bf16" in flags


def ours(bench, threads):
    out = subprocess.run(
        [bench, "--benchmark_filter=BM_orthogonalize/.*symmetric:1", "--benchmark_format=json",
         "--benchmark_repetitions=3"],
        check=True, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)}).stdout
    times = {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        args = dict(part.split(":") for part in b["name"].split("/")[1:] if ":" in part)
        key = (int(args["batch"]), int(args["rows"]), int(args["cols"]), int(args["bf16"]))
        # Best of the repetitions, as for torch below: the VM's noise only ever adds time.
        times[key] = min(times.get(key, float("inf")), b["real_time"] / 1e3)  # ms -> s
    return times


def torch_ns(shape, fp32, repeats):
    batch, rows, cols = shape
    g = torch.randn(batch, rows, cols)
    original = torch.Tensor.bfloat16
    if fp32:
        torch.Tensor.bfloat16 = lambda self: self.clone()
    try:
        run = lambda: [_muon._zeropower_via_newtonschulz(g[i], KELLER, 5, 1e-7) for i in range(batch)]
        run()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        return best
    finally:
        torch.Tensor.bfloat16 = original


def gflops(shape, seconds):
    batch, rows, cols = shape
    n, m = min(rows, cols), max(rows, cols)
    return batch * 5 * (4 * n * n * m + 2 * n ** 3) / seconds / 1e9


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bench", default="build/release/bench/bench_optimizer")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--bf16", action="store_true",
                   help="time torch's bf16 NS on a CPU without bf16 instructions too (slow there)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    mine = ours(a.bench, a.threads)
    hardware_bf16 = cpu_has_bf16()
    with_bf16 = a.bf16 or hardware_bf16
    print(f"# {platform.processor() or platform.machine()}, {a.threads} threads, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, bf16 instructions: {hardware_bf16}")
    print("| shape | ours fp32 (ms) | ours bf16 (ms) | torch fp32 (ms) | torch bf16 (ms) | ours GFLOP/s "
          "| fp32: ours / torch | **default: ours / torch.optim.Muon** |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        f32, b16 = mine[shape + (0,)], mine.get(shape + (1,))
        # What a user gets by default: bf16 where the hardware has it and oneDNN is built in.
        default = b16 if (hardware_bf16 and b16 is not None) else f32
        t32 = torch_ns(shape, True, 3)
        t16 = torch_ns(shape, False, 3 if hardware_bf16 else 1) if with_bf16 else None
        name = ("%d×" % shape[0] if shape[0] > 1 else "") + f"{shape[1]}×{shape[2]}"
        cell = lambda v: "—" if v is None else f"{v * 1e3:.0f}"
        headline = "—" if t16 is None else f"**{t16 / default:.2f}×**"
        print(f"| {name} | {cell(f32)} | {cell(b16)} | {cell(t32)} | {cell(t16)} | {gflops(shape, default):.0f} | "
              f"{t32 / f32:.2f}× | {headline} |", flush=True)


if __name__ == "__main__":
    main()
