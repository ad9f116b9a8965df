#!/usr/bin/env python3
"""Generate the NorMuon parity fixtures (tests/reference/fixtures/normuon/).

The reference is Algorithm 1 of the NorMuon paper (Li et al., "NorMuon: Making
Muon more efficient and scalable", arXiv 2510.05491), written here from the
paper in float64 torch, independent of the C++ code:

    M_t = b1 M_{t-1} + (1 - b1) G_t                      (EMA momentum, no Nesterov)
    O_t = NS5(M_t)                                       (Keller quintic, 5 steps)
    v_t = b2 v_{t-1} + (1 - b2) mean_cols(O_t * O_t)     (one value per row = output neuron)
    Ohat = O_t / (sqrt(v_t) + eps)                       (row-wise)
    lr_hat = 0.2 lr sqrt(m n) / ||Ohat||_F
    W_t = W_{t-1} - lr wd W_{t-1} - lr_hat Ohat

For a 3-D [E, m, n] expert stack each expert is its own (m, n) matrix with its
own rows' v (the project's per-expert rule).  v starts at zero and is not
bias-corrected, as in the paper.

It also checks this reading against microsoft/dion's NorMuon as its public
source describes it (the row axis: mean over the last dim; lerp by 1 - b2; eps
added to sqrt(v); no bias correction; rescale to the Frobenius norm the matrix
had before the row normalisation), reimplemented below from that description:
the two agree to rounding for an exactly orthogonal O, and for a Newton-Schulz
O they differ by the factor ||O||_F / sqrt(min(m, n)), which is printed.

Each file holds W0, G1..GK and W1..WK as the other optimizer fixtures do
(README.md), and V1..VK: the float64 second moments after step t, shape
[rows] or [experts, rows].  V is what catches a forgotten (1 - b2): started
at zero, v without it is v/(1 - b2) at every step, a uniform factor that the
Frobenius rescale cancels in W up to eps (the mutation lines printed below).

One fixture per shape: a tall 48x16 (rows > cols, and its gradient row 0 is
zero at every step: a dead neuron, v = 0 there, which only eps keeps finite),
a wide 16x48, and an expert stack 4x24x40.  K = 5 steps each.

Usage:  python tests/reference/make_normuon_fixtures.py [--out DIR]
Needs tests/reference/requirements.txt; imports the helpers of
make_optimizer_fixtures.py (data, file writing, comparisons).
"""

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_optimizer_fixtures as common  # noqa: E402

K = common.K
LR = 0.02
WEIGHT_DECAY = 0.1
BETA1 = 0.95
BETA2 = 0.95
EPS = 1e-8
NS_STEPS = common.NS_STEPS
NS_EPS = common.NS_EPS
SHAPES = [(48, 16), (16, 48), (4, 24, 40)]
DEAD_ROW_SHAPE = (48, 16)


def newton_schulz(m, dtype):
    """Keller's quintic on one matrix: X / (||X||_F + 1e-7), transposed when
    rows > cols so the Gram matrix is the small one; all in `dtype`."""
    a, b, c = common.NS_COEFFICIENTS
    x = m.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + NS_EPS)
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def normuon_paper(o, v, eps=EPS):
    """The paper's normalisation of one matrix; returns (update direction
    scaled so that lr * it has RMS 0.2 lr, new v)."""
    v = BETA2 * v + (1 - BETA2) * (o * o).mean(dim=1)
    o_hat = o / (v.sqrt() + eps)[:, None]
    rows, cols = o.shape
    return o_hat * (0.2 * math.sqrt(rows * cols) / o_hat.norm()), v


def normuon_dion_reading(o, v):
    """dion's normalisation as its source reads (not its code): lerp, eps 1e-8
    on sqrt(v), Frobenius norm kept from before, then its "rms_norm" lr
    adjustment 0.2 sqrt(max(m, n))."""
    v = torch.lerp(v, (o * o).mean(dim=-1), 1 - BETA2)
    o_hat = o / (v.sqrt() + 1e-8)[:, None]
    o_hat = o_hat * (o.norm() / o_hat.norm().clamp(min=1e-8))
    return o_hat * (0.2 * math.sqrt(max(o.shape))), v


def run(w0, grads, dtype):
    """K steps of the paper's algorithm; every matrix of a stack on its own."""
    w = w0.to(dtype).clone()
    m = torch.zeros_like(w)
    v = torch.zeros(w.shape[:-1], dtype=dtype)
    out, vs = [], []
    for g in grads:
        m.mul_(BETA1).add_(g.to(dtype), alpha=1 - BETA1)
        mats = [(w, m, v)] if w.ndim == 2 else [(w[e], m[e], v[e]) for e in range(w.shape[0])]
        for w_k, m_k, v_k in mats:
            direction, v_new = normuon_paper(newton_schulz(m_k, dtype), v_k)
            v_k.copy_(v_new)
            w_k.mul_(1 - LR * WEIGHT_DECAY)
            w_k.sub_(direction, alpha=LR)
        out.append(w.clone())
        vs.append(v.clone())
    return out, vs


def data(shape):
    seed, w0, grads, scales = common.make_data(shape, "normuon")
    if shape == DEAD_ROW_SHAPE:
        for g in grads:
            g[0].zero_()
    return seed, w0, grads, scales


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "normuon"))
    args = ap.parse_args()
    common.start(args.out)
    checks = common.Checks()
    written = []

    print("== the paper's rescale and dion's, read from its source ==")
    gen = torch.Generator().manual_seed(11)
    for rows, cols in [(48, 16), (16, 48), (24, 40)]:
        x = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
        u, _, vh = torch.linalg.svd(x, full_matrices=False)
        polar = u @ vh                                     # exactly orthogonal
        v0 = torch.rand(rows, generator=gen, dtype=torch.float64) * 0.1
        paper, v_paper = normuon_paper(polar, v0)
        dion, v_dion = normuon_dion_reading(polar, v0)
        rms = paper.norm().item() / math.sqrt(rows * cols)
        checks.require(abs(rms - 0.2) < 1e-12, f"{rows}x{cols}: the paper's update has RMS 0.2 (got {rms:.15f})")
        diff = max((paper - dion).abs().max().item(), (v_paper - v_dion).abs().max().item())
        checks.require(diff < 1e-12, f"{rows}x{cols}, orthogonal O: paper and dion's reading agree (max diff {diff:.2e})")
        o_ns = newton_schulz(x, torch.float64)
        ratio = o_ns.norm().item() / math.sqrt(min(rows, cols))
        print(f"     {rows}x{cols}, Newton-Schulz O: ||O||_F / sqrt(min) = {ratio:.4f} "
              f"(dion's update / the paper's, elementwise)")
        dion_ns, _ = normuon_dion_reading(o_ns, v0)
        paper_ns, _ = normuon_paper(o_ns, v0)
        checks.require(((dion_ns - paper_ns * ratio).abs().max() < 1e-12).item(),
                       f"{rows}x{cols}: on a Newton-Schulz O they differ by exactly that factor")

    print("\n== NorMuon trajectories ==")
    for shape in SHAPES:
        seed, w0, grads, scales = data(shape)
        tag = common.shape_tag(shape)
        ws64, v64 = run(w0, grads, torch.float64)
        ws32, _ = run(w0, grads, torch.float32)
        checks.compare(f"normuon_{tag}: all-float32 run vs float64", ws32, ws64, w0, upd_rel_tol=1e-4)
        checks.require(all(torch.isfinite(w).all().item() for w in ws64), f"normuon_{tag}: finite")
        if shape == DEAD_ROW_SHAPE:
            checks.require(v64[-1][0].item() == 0.0, f"normuon_{tag}: the dead row keeps v = 0")
        if len(shape) == 3:
            for e in range(shape[0]):
                ws_e, _ = run(w0[e], [g[e] for g in grads], torch.float64)
                checks.require(common.same_bits([w[e] for w in ws64], ws_e),
                               f"normuon_{tag}: expert {e} equals a separate 2-D run bit for bit")
        # How far the rules a test must tell apart are from this one (upd_rel), for the tolerance.
        for label, mutated in [("columns instead of rows", normuon_cols),
                               ("without the (1 - b2) factor", normuon_no_gain),
                               ("dion's Frobenius-keeping rescale", normuon_dion_reading)]:
            _, _, upd_rel = common.traj_diff(run_with(w0, grads, mutated), ws64, w0)
            print(f"     mutation '{label}': upd_rel {upd_rel:.3e}")
        md = common.base_metadata()
        md.update({
            "reference": "NorMuon, arXiv 2510.05491 Algorithm 1",
            "source": "tests/reference/make_normuon_fixtures.py (written from the paper; float64)",
            "lr": common.fmt(LR), "weight_decay": common.fmt(WEIGHT_DECAY),
            "momentum": common.fmt(BETA1), "nesterov": "false", "momentum_form": "ema",
            "ns_steps": str(NS_STEPS), "ns_eps": common.fmt(NS_EPS), "ns_dtype": "float64",
            "ns_coefficients": ",".join(common.fmt(c) for c in common.NS_COEFFICIENTS),
            "scale_mode": "match_adamw_rms", "eps_mode": "add",
            "update_scale": "0.2*sqrt(rows*cols)/||Ohat||_F",
            "normuon_beta2": common.fmt(BETA2), "normuon_eps": common.fmt(EPS),
            "param_dtype": "float64", "seed": str(seed),
            "grad_scales": ",".join(f"{s:.6g}" for s in scales),
            "note": ("m = b1 m + (1-b1) g; O = NS(m); v = b2 v + (1-b2) mean_cols(O*O); Ohat = O/(sqrt(v)+eps); "
                     "W = W(1-lr wd) - lr 0.2 sqrt(rows cols)/||Ohat||_F Ohat; per expert for 3-D"
                     + ("; gradient row 0 is zero at every step" if shape == DEAD_ROW_SHAPE else "")),
        })
        common.write_case(args.out, f"normuon_{tag}_f64", w0, grads, ws64, torch.float64, md, written,
                          extra={f"V{t}": v.contiguous() for t, v in enumerate(v64, start=1)})

    return common.report(written, args.out, checks)


def normuon_cols(o, v_unused):
    """A wrong axis: the second moment per column (v of the transposed matrix)."""
    direction, v = normuon_paper(o.T, v_unused)
    return direction.T, v


def normuon_no_gain(o, v):
    """A wrong EMA: v = b2 v + mean(O*O), the (1 - b2) factor forgotten."""
    v = BETA2 * v + (o * o).mean(dim=1)
    o_hat = o / (v.sqrt() + EPS)[:, None]
    return o_hat * (0.2 * math.sqrt(o.numel()) / o_hat.norm()), v


def run_with(w0, grads, normalise):
    """run() in float64 with another normalisation (v per row or per column, as it returns)."""
    w = w0.to(torch.float64).clone()
    m = torch.zeros_like(w)
    mats_of = (lambda t: [t]) if w.ndim == 2 else (lambda t: [t[e] for e in range(t.shape[0])])
    vs = [None] * len(mats_of(w))
    out = []
    for g in grads:
        m.mul_(BETA1).add_(g.double(), alpha=1 - BETA1)
        for k, (w_k, m_k) in enumerate(zip(mats_of(w), mats_of(m))):
            o = newton_schulz(m_k, torch.float64)
            if vs[k] is None:
                vs[k] = torch.zeros(o.shape[1] if normalise is normuon_cols else o.shape[0], dtype=torch.float64)
            direction, vs[k] = normalise(o, vs[k])
            w_k.mul_(1 - LR * WEIGHT_DECAY)
            w_k.sub_(direction, alpha=LR)
        out.append(w.clone())
    return out


if __name__ == "__main__":
    sys.exit(main())
