#!/usr/bin/env python3
"""Moonlight forward throughput: our C++ model (bench_moonlight) against transformers, same config.

Runs build/release/bench/bench_moonlight (Google Benchmark, JSON, OMP_NUM_THREADS=threads) and then
transformers' DeepseekV3ForCausalLM (fp32, eval, torch.inference_mode, torch.set_num_threads(threads),
default attention implementation, DynamicCache) on the same ~106M-parameter Moonlight-shaped config,
in this one invocation. Both report the best of `--repeats` runs of:

  prefill: one forward pass over a 128-token prompt (logits of the last token only);
  decode:  32 greedy tokens one at a time after that prompt, on each side's KV cache
           (ours: the absorbed MLA latent cache; transformers: per-head K and V).

    python3 bench/compare_moonlight.py [--bench build/release/bench/bench_moonlight] [--threads 2]

Requires torch and transformers (tests/reference/requirements.txt pins the versions).
"""
import argparse
import json
import os
import platform
import subprocess
import time

import torch
import transformers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

# Keep in sync with kConfig in bench/bench_moonlight.cpp.
CONFIG = dict(
    vocab_size=16384, hidden_size=512, intermediate_size=2816, moe_intermediate_size=128,
    num_hidden_layers=7, num_attention_heads=8, num_key_value_heads=8, n_routed_experts=64,
    num_experts_per_tok=6, n_shared_experts=2, n_group=1, topk_group=1, first_k_dense_replace=1,
    kv_lora_rank=256, q_lora_rank=None, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
    max_position_embeddings=4096, routed_scaling_factor=2.446, norm_topk_prob=True, rms_norm_eps=1e-5,
    rope_theta=50000.0, tie_word_embeddings=False)
PROMPT, DECODE = 128, 32


def run_ours(bench, threads, repeats):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([bench, "--benchmark_format=json", f"--benchmark_repetitions={repeats}"],
                         env=env, check=True, capture_output=True, text=True).stdout
    rows = [b for b in json.loads(out)["benchmarks"] if b.get("run_type") == "iteration"]
    best = {}
    for b in rows:
        name = b["run_name"].split("/")[0].replace("BM_moonlight_", "")
        best[name] = max(best.get(name, 0.0), b["tokens/s"])
        if name == "decode":
            best["kv_bytes_per_token"] = b["kv_bytes_per_token"]
            best["params"] = b["params"]
    return best


def run_transformers(threads, repeats):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**CONFIG)).eval()
    ids = torch.tensor([[(i * 7919) % 16000 for i in range(PROMPT)]])
    prefill, decode = 0.0, 0.0
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            prefill = max(prefill, PROMPT / (time.perf_counter() - start))
            cache, token = out.past_key_values, torch.tensor([[1]])
            start = time.perf_counter()
            for _ in range(DECODE):
                out = model(token, past_key_values=cache, use_cache=True, logits_to_keep=1)
                cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            decode = max(decode, DECODE / (time.perf_counter() - start))
    c = model.config
    kv = c.num_hidden_layers * c.num_attention_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) * 4
    return {"prefill": prefill, "decode": decode, "kv_bytes_per_token": kv,
            "params": sum(p.numel() for p in model.parameters())}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench", default="build/release/bench/bench_moonlight")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours = run_ours(args.bench, args.threads, args.repeats)
    theirs = run_transformers(args.threads, args.repeats)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible; threads {args.threads}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"parameters: ours {ours['params']:.0f}, transformers {theirs['params']}")
    print(f"{'':10s} {'ours tok/s':>12s} {'transformers':>13s} {'ratio':>7s}")
    for key in ("prefill", "decode"):
        print(f"{key:10s} {ours[key]:12.1f} {theirs[key]:13.1f} {ours[key] / theirs[key]:6.2f}x")
    print(f"KV cache bytes/token (fp32): ours {ours['kv_bytes_per_token']:.0f} (layers x (kv_lora_rank + "
          f"qk_rope_head_dim) x 4), transformers {theirs['kv_bytes_per_token']}")


if __name__ == "__main__":
    main()
