#!/usr/bin/env python3
"""Generate the Moonlight (DeepseekV3) parity fixtures for examples/moonlight/tests.

Builds tiny random ``transformers.DeepseekV3ForCausalLM`` models (fixed seed, float32, CPU) and
saves each as a Hugging Face checkpoint (config.json + safetensors) under
``tests/reference/fixtures/moonlight/<name>/``, together with ``reference.safetensors``: for each
fixed prompt ``prompt_<i>/ids`` (I64), ``prompt_<i>/logits`` (F32 [T, vocab], one full forward
pass) and ``prompt_<i>/greedy`` (I64, greedy continuation computed by repeated full forward
passes and argmax, no KV cache).

Models:
  * ``tiny_moonlight``: shaped like Moonlight-16B-A3B: q_lora_rank null, n_group 1, topk_group 1,
    first_k_dense_replace 1, sigmoid noaux_tc router with a non-zero random
    e_score_correction_bias (so that using it for selection only is tested).
  * ``tiny_qlora_groups``: q_lora_rank set, n_group 4 > topk_group 2, first_k_dense_replace 2;
    its latent projections are scaled so that the latent norms' eps (1e-6) matters.
  * ``tiny_moonlight_bf16_sharded``: the first model's weights in bfloat16, sharded with
    model.safetensors.index.json (tests the bf16 and index paths; no logits).

What the C++ side must match (checked in transformers 4.57.6, models/deepseek_v3):
  * RoPE: ``rope_interleave`` defaults to True -> ``apply_rotary_pos_emb_interleave``, i.e. the
    rope channels rotate as consecutive pairs (x[2i], x[2i+1]); inv_freq = theta^(-2i/d_rope).
  * ``kv_a_layernorm`` and ``q_a_layernorm`` are built without eps: DeepseekV3RMSNorm default 1e-6.
  * MoE layer iff layer_idx >= first_k_dense_replace (moe_layer_freq is 1 here).
  * Router: fp32 sigmoid, bias for selection, group score = sum of top-2, masked groups filled
    with 0.0, weights from unbiased scores / (sum + 1e-20) * routed_scaling_factor.

Usage: /work/venv/bin/python tests/reference/make_moonlight_fixtures.py [--out DIR]
Versions: tests/reference/requirements.txt.
"""

import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

SEED = 1234
VOCAB = 300

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=16,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_shared_experts=2,
    n_routed_experts=8,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    hidden_act="silu",
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=50000.0,
    routed_scaling_factor=2.446,
    norm_topk_prob=True,
    tie_word_embeddings=False,
    attention_bias=False,
    bos_token_id=VOCAB - 4,
    eos_token_id=VOCAB - 2,
    initializer_range=0.1,
)

MODELS = {
    "tiny_moonlight": dict(COMMON, q_lora_rank=None, n_group=1, topk_group=1,
                           num_experts_per_tok=3, first_k_dense_replace=1),
    "tiny_qlora_groups": dict(COMMON, q_lora_rank=24, n_group=4, topk_group=2,
                              num_experts_per_tok=3, first_k_dense_replace=2,
                              num_hidden_layers=4),
}

# Prompts long enough that RoPE acts far from position 0 (a NeoX-vs-interleaved mix-up shows).
PROMPT_LENGTHS = (5, 37)
GREEDY_NEW_TOKENS = 12


def build(name, kwargs, generator):
    config = DeepseekV3Config(**kwargs)
    config.architectures = ["DeepseekV3ForCausalLM"]
    config._attn_implementation = "eager"
    torch.manual_seed(SEED + len(name))
    model = DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        # Random norm gains and router bias: the defaults (ones, zeros) would hide a misapplied
        # norm or a bias used as a weight.
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
        for mname, buf in model.named_buffers():
            if mname.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=generator))
        if kwargs["q_lora_rank"] is not None:
            # Shrink the latents to variance ~1e-6, comparable to the norms' eps, so that using
            # rms_norm_eps (1e-5) instead of DeepseekV3RMSNorm's default 1e-6 for kv_a_layernorm and
            # q_a_layernorm changes the logits far beyond the test tolerance.
            for layer in model.model.layers:
                layer.self_attn.kv_a_proj_with_mqa.weight[: kwargs["kv_lora_rank"]] *= 1e-3
                layer.self_attn.q_a_proj.weight *= 1e-3
    return model


def greedy(model, ids, n):
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([out])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
    return out[len(ids):]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "fixtures", "moonlight"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(SEED)
    prompts = [torch.randint(0, VOCAB - 8, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]

    for name, kwargs in MODELS.items():
        model = build(name, kwargs, generator)
        out = os.path.join(args.out, name)
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out, safe_serialization=True)
        tensors = {}
        with torch.no_grad():
            for i, ids in enumerate(prompts):
                logits = model(torch.tensor([ids])).logits[0].float().contiguous()
                cont = greedy(model, ids, GREEDY_NEW_TOKENS)
                # Self-check: transformers' own cached generate agrees with the no-cache loop.
                gen = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
                assert gen == cont, (name, i, gen, cont)
                tensors[f"prompt_{i}/ids"] = torch.tensor(ids, dtype=torch.int64)
                tensors[f"prompt_{i}/logits"] = logits
                tensors[f"prompt_{i}/greedy"] = torch.tensor(cont, dtype=torch.int64)
                print(f"{name} prompt {i}: T={len(ids)} max|logit|={logits.abs().max():.3f} greedy={cont}")
        if kwargs["q_lora_rank"] is not None:
            # Self-check: the latent norms' eps is visible in these logits.
            norms = [m for n, m in model.named_modules() if n.endswith(("kv_a_layernorm", "q_a_layernorm"))]
            for m in norms:
                m.variance_epsilon = kwargs["rms_norm_eps"]
            with torch.no_grad():
                wrong = model(tensors["prompt_1/ids"][None]).logits[0]
            for m in norms:
                m.variance_epsilon = 1e-6
            ref = tensors["prompt_1/logits"]
            rel = ((wrong - ref).abs().max(dim=-1).values / ref.abs().max(dim=-1).values).max().item()
            print(f"{name}: eps 1e-5 instead of 1e-6 in the latent norms changes logits by {rel:.3g} (relative)")
            assert rel > 1e-2, rel
        save_file(tensors, os.path.join(out, "reference.safetensors"),
                  metadata={"transformers_version": transformers.__version__,
                            "torch_version": torch.__version__, "seed": str(SEED)})
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n_params} parameters")

        if name == "tiny_moonlight":
            sharded = os.path.join(args.out, "tiny_moonlight_bf16_sharded")
            shutil.rmtree(sharded, ignore_errors=True)
            model.to(torch.bfloat16).save_pretrained(sharded, safe_serialization=True, max_shard_size="150KB")
            with open(os.path.join(sharded, "model.safetensors.index.json")) as f:
                n_shards = len(set(json.load(f)["weight_map"].values()))
            assert n_shards > 1, n_shards
            print(f"{name}: bf16 copy in {n_shards} shards")


if __name__ == "__main__":
    main()
