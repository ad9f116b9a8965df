// tests/moonlight_16b_table.hpp: the trainable tensors of Moonlight-16B-A3B (HF names and
// shapes, docs/moonlight-architecture.md §1, §4) with Moonlight's routing: every 2-D weight
// but the embedding and the head on Muon (the router included), norms and the embedding and head
// on AdamW; e_score_correction_bias is updated by the balance rule and has no optimizer. Shapes
// only: the ZeRO-1 planner test and bench plan the real model without allocating it.
#pragma once

#include <muon/distributed/plan.hpp>
#include <string>
#include <vector>

namespace muon::test {

inline std::vector<distributed::TensorToShard> moonlight_16b_table() {
  constexpr std::int64_t hidden = 2048, vocab = 163840, dense = 11264, expert = 1408, shared = 2 * 1408;
  constexpr int layers = 27, experts = 64;
  using distributed::TensorToShard;
  std::vector<TensorToShard> t{{"model.embed_tokens.weight", {vocab, hidden}, Rule::adamw}};
  for (int i = 0; i < layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    t.push_back({l + "input_layernorm.weight", {hidden}, Rule::adamw});
    t.push_back({l + "self_attn.q_proj.weight", {16 * 192, hidden}, Rule::muon});
    t.push_back({l + "self_attn.kv_a_proj_with_mqa.weight", {512 + 64, hidden}, Rule::muon});
    t.push_back({l + "self_attn.kv_a_layernorm.weight", {512}, Rule::adamw});
    t.push_back({l + "self_attn.kv_b_proj.weight", {16 * 256, 512}, Rule::muon});
    t.push_back({l + "self_attn.o_proj.weight", {hidden, 16 * 128}, Rule::muon});
    t.push_back({l + "post_attention_layernorm.weight", {hidden}, Rule::adamw});
    const auto swiglu = [&](const std::string& p, std::int64_t width) {
      t.push_back({p + "gate_proj.weight", {width, hidden}, Rule::muon});
      t.push_back({p + "up_proj.weight", {width, hidden}, Rule::muon});
      t.push_back({p + "down_proj.weight", {hidden, width}, Rule::muon});
    };
    if (i == 0) {
      swiglu(l + "mlp.", dense);
      continue;
    }
    t.push_back({l + "mlp.gate.weight", {experts, hidden}, Rule::muon});
    for (int e = 0; e < experts; ++e) swiglu(l + "mlp.experts." + std::to_string(e) + ".", expert);
    swiglu(l + "mlp.shared_experts.", shared);
  }
  t.push_back({"model.norm.weight", {hidden}, Rule::adamw});
  t.push_back({"lm_head.weight", {vocab, hidden}, Rule::adamw});
  return t;
}

}  // namespace muon::test
