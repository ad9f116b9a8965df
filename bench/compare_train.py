#!/usr/bin/env python3
"""Moonlight training throughput: our C++ trainer (bench_train) against transformers + torch.optim.

Runs build/release/bench/bench_train (Google Benchmark, JSON, OMP_NUM_THREADS=threads) and then,
in this same invocation, transformers' DeepseekV3ForCausalLM built from the "model" object of
examples/moonlight/configs/tiny.json (fp32, train mode, torch.set_num_threads(threads)) on batches
of the same shape (micro_batch x seq_len of random ids; labels = ids, shifted by transformers), one
step = forward + loss.backward() + clip_grad_norm_(1.0) + optimizer.step() + zero_grad():

  muon:  torch.optim.Muon (lr 2e-3, wd 0.1, momentum 0.95, Nesterov, 5 NS steps,
         adjust_lr_fn="match_rms_adamw", Moonlight's 0.2*sqrt(max(A, B))) on every 2-D weight of
         the decoder layers (attention projections, router, experts, shared experts, dense MLP),
         torch.optim.AdamW (betas 0.9/0.95, eps 1e-8, wd 0.1) on the embedding, the LM head and
         the norms: Moonlight's split, as our trainer does;
  adamw: torch.optim.AdamW on everything.

Both sides report tokens/s over the measured steps (after warm-up), the forward + backward ratio
(each side's time per token without its optimizer share), and the optimizer's share of
the step time (ours: the ZeRO-1 optimizer step; theirs: clip + step + zero_grad).

    python3 bench/compare_train.py [--bench build/release/bench/bench_train] [--threads 2] [--steps 8]

Requires torch and transformers (tests/reference/requirements.txt pins the versions).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import time

import torch
import transformers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_CONFIG = os.path.join(ROOT, "examples", "moonlight", "configs", "tiny.json")


def run_ours(bench, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([bench, "--benchmark_format=json"], env=env, check=True, capture_output=True, text=True)
    results = {}
    for b in json.loads(out.stdout)["benchmarks"]:
        name = b["name"].split("/")[1]  # BM_train_step/<optimizer>/min_time:.../manual_time
        results[name] = {"tokens_per_s": b["tokens_per_s"], "optimizer_share": b["optimizer_share"]}
    return results


def make_optimizer(model, which, lr, wd):
    if which == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)]
    matrices, others = [], []
    for name, p in model.named_parameters():
        (matrices if p.ndim == 2 and name.startswith("model.layers.") else others).append(p)
    return [
        torch.optim.Muon(matrices, lr=lr, weight_decay=wd, momentum=0.95, nesterov=True, ns_steps=5,
                         adjust_lr_fn="match_rms_adamw"),
        torch.optim.AdamW(others, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd),
    ]


def run_theirs(model_config, training, optimizer, which, threads, steps, warmup):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = DeepseekV3Config(**{k: v for k, v in model_config.items() if k not in ("architectures", "model_type")})
    model = DeepseekV3ForCausalLM(config).float().train()
    optimizers = make_optimizer(model, which, optimizer["lr"], optimizer["weight_decay"])
    batch, seq = training["micro_batch"], training["seq_len"]
    total, in_optimizer = 0.0, 0.0
    for step in range(warmup + steps):
        ids = torch.randint(0, 8192, (batch, seq))
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        middle = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optimizer["max_grad_norm"])
        for o in optimizers:
            o.step()
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        end = time.perf_counter()
        if step >= warmup:
            total += end - start
            in_optimizer += end - middle
    return {"tokens_per_s": steps * batch * seq / total, "optimizer_share": in_optimizer / total}


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default=os.path.join(ROOT, "build", "release", "bench", "bench_train"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="measured PyTorch steps per optimizer")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    with open(RUN_CONFIG) as f:
        run = json.load(f)
    ours = run_ours(args.bench, args.threads)
    rows = []
    for which in ("muon", "adamw"):
        theirs = run_theirs(run["model"], run["training"], run["muon"], which, args.threads, args.steps, args.warmup)
        rows.append((which, ours[which], theirs))

    print(f"Training tokens/s, tiny Moonlight config ({run['training']['micro_batch']} x {run['training']['seq_len']} "
          f"tokens per step), {args.threads} threads, {cpu_name()}, {datetime.date.today()}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}\n")
    print("| optimizer | ours tokens/s | transformers + torch.optim tokens/s | ratio | optimizer share: ours | theirs "
          "| forward + backward ratio |")
    print("|---|---|---|---|---|---|---|")
    for which, o, t in rows:
        # Forward + backward alone: the step's time per token without the optimizer's share.
        fwd_bwd = ((1 - t["optimizer_share"]) / t["tokens_per_s"]) / ((1 - o["optimizer_share"]) / o["tokens_per_s"])
        print(f"| {which} | {o['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | {o['tokens_per_s'] / t['tokens_per_s']:.2f}x "
              f"| {100 * o['optimizer_share']:.1f}% | {100 * t['optimizer_share']:.1f}% | {fwd_bwd:.2f}x |")


if __name__ == "__main__":
    main()
