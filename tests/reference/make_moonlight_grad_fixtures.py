#!/usr/bin/env python3
"""Generate the Moonlight backward-pass fixtures for examples/moonlight/tests/test_backward.cpp.

For each tiny checkpoint written by make_moonlight_fixtures.py (run that first), loads it with
``transformers.DeepseekV3ForCausalLM`` in float32 on the CPU, runs one fixed token batch
``ids`` (I64 [T + 1]) through ``model(ids, labels=ids)`` in training mode and saves, in
``<model>/gradients.safetensors``:

  * ``ids``: the batch; the C++ side feeds ids[:T] as inputs and ids[1:] as targets;
  * ``loss`` (F32 [1]): transformers' causal-LM loss, i.e. the mean cross-entropy of logits[t]
    against ids[t + 1] over the T positions (labels are shifted inside the model);
  * ``grad/<name>`` (F32): d loss / d parameter for every parameter (HF name). The router's
    e_score_correction_bias is a buffer in transformers and gets no gradient; the expert
    selection (top-k) is not differentiated, the selected experts' normalised sigmoid weights are.

Usage: /work/venv/bin/python tests/reference/make_moonlight_grad_fixtures.py [--dir DIR]
Versions: tests/reference/requirements.txt.
"""

import argparse
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import DeepseekV3ForCausalLM

SEED = 4321
MODELS = ("tiny_moonlight", "tiny_qlora_groups")
TOKENS = 24  # inputs per batch; long enough that every expert of the tiny models gets tokens


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=os.path.join(os.path.dirname(__file__), "fixtures", "moonlight"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(SEED)
    for name in MODELS:
        path = os.path.join(args.dir, name)
        model = DeepseekV3ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        model.train()  # dropout is 0 in these configs; train() only matters for the graph
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab - 8, (TOKENS + 1,), generator=generator)
        out = model(ids[None], labels=ids[None])
        out.loss.backward()
        tensors = {"ids": ids.to(torch.int64), "loss": out.loss.detach().reshape(1).float()}
        for pname, p in model.named_parameters():
            assert p.grad is not None, pname
            tensors[f"grad/{pname}"] = p.grad.detach().float().contiguous()
        save_file(tensors, os.path.join(path, "gradients.safetensors"),
                  metadata={"transformers_version": transformers.__version__,
                            "torch_version": torch.__version__, "seed": str(SEED)})
        print(f"{name}: loss {out.loss.item():.6f}, {len(tensors) - 2} gradients")


if __name__ == "__main__":
    main()
