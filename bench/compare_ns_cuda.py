#!/usr/bin/env python3
"""Newton–Schulz on the GPU: muon's CUDA backend against torch.optim.Muon's own NS code, same GPU, same run.

Runs build/release/bench/bench_cuda (Google Benchmark, JSON; CUDA-event timing) and then
torch.optim._muon._zeropower_via_newtonschulz (torch's Muon NS: bf16 iterations, 5 Keller steps,
X/max(‖X‖, 1e-7)) on the same shapes on the same GPU, timed with CUDA events, best of the
repetitions on both sides. A stack of 64 experts is 64 calls of torch's function, since
torch.optim.Muon takes only 2-D matrices (batching is pytorch/pytorch#195566). Also measures
torch's bf16 GEMM rate and device-to-device copy bandwidth as a cross-check of ours.

Prints the tables for docs/performance.md:
  NS: shape, ours bf16 (ms), torch bf16 (ms), speed-up, ours TFLOP/s, % of our measured GEMM rate;
  AdamW: GB/s against the measured copy bandwidth;
  a whole optimizer step over one Moonlight MoE layer, with either gradient check.

    python3 bench/compare_ns_cuda.py [--bench build/release/bench/bench_cuda] [--repetitions 5]

Targets (issue 3): ≥ 1.3× torch on the 64-expert stack and on 2048×2048; ≥ 60% of the measured
GEMM rate on 4096×4096; AdamW ≥ 80% of the copy bandwidth.

Requires torch with CUDA (tests/reference/requirements.txt pins the version) and a GPU.
"""
import argparse
import json
import subprocess
import time

import torch
from torch.optim import _muon

KELLER = (3.4445, -4.7750, 2.0315)


def ours(bench, repetitions):
    out = subprocess.run(
        [bench, "--benchmark_format=json", f"--benchmark_repetitions={repetitions}"],
        check=True, capture_output=True, text=True).stdout
    ns, gemm, adamw, copy, step = {}, {}, {}, {}, {}
    for b in json.loads(out)["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        name = b["name"].split("/")
        args = dict(part.split(":") for part in name[1:] if ":" in part)
        seconds = b["real_time"] / {"ms": 1e3, "us": 1e6, "ns": 1e9}[b["time_unit"]]
        if name[0] == "BM_cuda_orthogonalize":
            key = (int(args["batch"]), int(args["rows"]), int(args["cols"]), int(args["bf16"]))
            ns[key] = min(ns.get(key, float("inf")), seconds)
        elif name[0] == "BM_cuda_gemm_bf16":
            gemm[int(name[1])] = max(gemm.get(int(name[1]), 0.0), b["TFLOP/s"])
        elif name[0] == "BM_cuda_adamw":
            key = (int(name[1]), int(name[2]))
            adamw[key] = max(adamw.get(key, 0.0), b["GB/s"])
        elif name[0] == "BM_cuda_copy":
            copy[int(name[1])] = max(copy.get(int(name[1]), 0.0), b["GB/s"])
        elif name[0] == "BM_cuda_step":
            key = int(args["one_sync"])
            step[key] = min(step.get(key, float("inf")), seconds)
    return ns, gemm, adamw, copy, step


def cuda_time(fn, repetitions):
    """Best of `repetitions` CUDA-event timings of fn(), after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(repetitions):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop) / 1e3)
    return best


def torch_ns(batch, rows, cols, repetitions):
    g = torch.randn(batch, rows, cols, device="cuda")
    return cuda_time(lambda: [_muon._zeropower_via_newtonschulz(g[i], KELLER, 5, 1e-7) for i in range(batch)],
                     repetitions)


def torch_gemm_tflops(n, repetitions):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n ** 3 / cuda_time(lambda: a @ b, repetitions) / 1e12


def ns_flops(batch, rows, cols):
    n, m = min(rows, cols), max(rows, cols)
    return batch * 5 * (4 * n * n * m + 2 * n ** 3)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bench", default="build/release/bench/bench_cuda")
    p.add_argument("--repetitions", type=int, default=5)
    a = p.parse_args()
    mine, gemm, adamw, copy, step = ours(a.bench, a.repetitions)
    gpu = torch.cuda.get_device_name()
    print(f"# {gpu}, torch {torch.__version__} (CUDA {torch.version.cuda}), {time.strftime('%Y-%m-%d')}")
    print(f"# bf16 GEMM rate, ours (cuBLAS): " + ", ".join(f"{n}: {t:.0f} TFLOP/s" for n, t in sorted(gemm.items())) +
          f"; torch 4096: {torch_gemm_tflops(4096, a.repetitions):.0f} TFLOP/s")
    peak = gemm.get(4096, max(gemm.values()))
    print("| shape | ours bf16 (ms) | ours fp32 (ms) | torch bf16 (ms) | speed-up vs torch | ours TFLOP/s "
          "| % of GEMM rate |")
    print("|---|---|---|---|---|---|---|")
    for (batch, rows, cols, bf16), seconds in sorted(mine.items(), key=lambda kv: (kv[0][0], kv[0][1] * kv[0][2])):
        if not bf16:
            continue
        fp32 = mine.get((batch, rows, cols, 0))
        peer = torch_ns(batch, rows, cols, a.repetitions)
        tflops = ns_flops(batch, rows, cols) / seconds / 1e12
        name = (f"{batch}×" if batch > 1 else "") + f"{rows}×{cols}"
        f32 = "—" if fp32 is None else f"{fp32 * 1e3:.2f}"
        print(f"| {name} | {seconds * 1e3:.2f} | {f32} | {peer * 1e3:.2f} | {peer / seconds:.2f}× | {tflops:.0f} | "
              f"{100 * tflops / peak:.0f}% |", flush=True)
    bandwidth = max(copy.values())
    print(f"\n# device-to-device copy: {bandwidth:.0f} GB/s (read + write)")
    print("| AdamW tensors × elements | GB/s | % of copy bandwidth |")
    print("|---|---|---|")
    for (tensors, elements), gbs in sorted(adamw.items()):
        print(f"| {tensors} × {elements} | {gbs:.0f} | {100 * gbs / bandwidth:.0f}% |")
    print("\n| optimizer step, one Moonlight MoE layer | ms |")
    print("|---|---|")
    for one_sync, seconds in sorted(step.items()):
        check = "check_gradients_on_device (one sync)" if one_sync else "Optimizer::check_gradients (one sync per parameter)"
        print(f"| {check} | {seconds * 1e3:.1f} |")


if __name__ == "__main__":
    main()
