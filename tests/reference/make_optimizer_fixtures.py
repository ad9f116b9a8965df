#!/usr/bin/env python3
"""Generate reference fixtures for the Muon / AdamW optimizer tests.

Every fixture file ``tests/reference/fixtures/<case>.safetensors`` holds one
optimizer trajectory of K steps on one parameter tensor:

    W0          initial parameter (float32)
    G1 .. GK    gradient fed at step t (float32)
    W1 .. WK    expected parameter after step t
                (float32 for bf16-Newton-Schulz runs and float32 AdamW runs,
                 float64 for the float64 runs)

plus string metadata describing the exact convention (see README.md).

References reproduced:

* ``moonlight.toy_train`` -- the Muon rule of MoonshotAI/Moonlight
  ``examples/toy_train.py`` at commit c2ad5b2 (class ``Muon`` and
  ``zeropower_via_newtonschulz5``).  That file is a training script, not an
  importable library, so the rule is re-implemented below (``moonlight_*``
  functions) op for op, in eager mode.
* ``torch.optim.Muon`` -- the real class from the installed torch; for the
  float64 variants its internal Newton-Schulz function is monkeypatched by a
  float64 twin (same transposition, same ``clamp(min=eps)`` normalisation,
  same addmm formulation).
* ``torch.optim.AdamW`` -- the real class.

Deterministic: CPU only, one thread, fixed seeds.  Self-checks at the end of
each group print the bf16-vs-float64 differences that the C++ tests'
tolerances are based on and abort (non-zero exit) if a reproduction is wrong.

Usage:  python tests/reference/make_optimizer_fixtures.py [--out DIR] [--check-compile]
"""

import argparse
import contextlib
import json
import math
import os
import sys
import zlib

import torch
import torch.optim._muon as torch_muon_module
from safetensors import safe_open
from safetensors.torch import save_file

# ----------------------------------------------------------------------------
# Fixed experiment parameters
# ----------------------------------------------------------------------------
K = 5                                   # optimizer steps per fixture
MUON_LR = 0.02
ADAMW_LR = 0.01
WEIGHT_DECAY = 0.1
MOMENTUM = 0.95
NESTEROV = True
NS_STEPS = 5
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)   # Keller quintic (a, b, c)
NS_EPS = 1e-7
ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
W0_STD = 0.05
BASE_SEED = 20250                        # combined with a CRC of the shape tag
GRAD_LOG10_RANGE = (-2.0, 1.0)           # per-step gradient scale 10**U(-2, 1)

# Shapes.  Halved from the [64,64]/[32,96]/[96,32]/[4,48,80] first proposed so
# that the whole fixtures folder stays near 1 MB (those would take ~5 MB);
# aspect ratios (square, wide 1:3, tall 3:1, wide 3:5 experts) are kept.
MUON_2D_SHAPES = [(32, 32), (16, 48), (48, 16)]
MUON_EXPERT_SHAPES = [(4, 24, 40)]       # [experts, rows, cols]
ADAMW_SHAPES = [(64,), (32, 48)]

MOONLIGHT_SOURCE = "MoonshotAI/Moonlight:examples/toy_train.py@c2ad5b2"

TORCH_ADJUST_TO_SCALE_MODE = {
    "original": "keller",                # sqrt(max(1, A/B))
    "match_rms_adamw": "match_adamw_rms",  # 0.2*sqrt(max(A, B))
}


def shape_tag(shape):
    return "x".join(str(d) for d in shape)


def fmt(x):
    return repr(float(x))


# ----------------------------------------------------------------------------
# Deterministic data
# ----------------------------------------------------------------------------
def make_data(shape, kind):
    """W0 and G1..GK (float32) for one shape; identical for every case of a
    given (kind, shape) so that cross-reference checks are possible."""
    tag = f"{kind}:{shape_tag(shape)}"
    seed = BASE_SEED + zlib.crc32(tag.encode()) % 1_000_000
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w0 = torch.randn(shape, generator=gen, dtype=torch.float32) * W0_STD
    lo, hi = GRAD_LOG10_RANGE
    scales, grads = [], []
    for _ in range(K):
        u = torch.rand((), generator=gen, dtype=torch.float64).item()
        s = 10.0 ** (lo + (hi - lo) * u)
        scales.append(s)
        grads.append((torch.randn(shape, generator=gen, dtype=torch.float32) * s).contiguous())
    return seed, w0.contiguous(), grads, scales


# ----------------------------------------------------------------------------
# (a) Moonlight toy_train Muon, re-implemented.
#     Source: MoonshotAI/Moonlight examples/toy_train.py, commit c2ad5b2.
# ----------------------------------------------------------------------------
def moonlight_newton_schulz(mat, steps, iter_dtype):
    """Keller quintic NS exactly as toy_train's zeropower_via_newtonschulz5
    evaluates it in eager mode (the script decorates it with torch.compile;
    see --check-compile for how much inductor fusion changes bf16 rounding).

    * cast to the iteration dtype first, transpose if rows > cols;
    * normalise X / (||X||_F + 1e-7) -- the norm is taken of the cast copy and
      1e-7 is added in that dtype (a bf16 scalar tensor for bf16);
    * the script writes ``B = b * A + c * A @ A``; Python evaluates
      ``c * A @ A`` as ``(c * A) @ A`` (same precedence, left-assoc.), so in
      bf16 c*A is rounded before the product.  Reproduced literally.
    """
    assert mat.ndim == 2
    a, b, c = NS_COEFFICIENTS
    x = mat.to(iter_dtype)
    transposed = mat.size(0) > mat.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + (c * gram) @ gram
        x = a * x + poly @ x
    if transposed:
        x = x.T
    return x


def moonlight_run(w0, grads, ns_dtype):
    """Moonlight toy_train Muon branch for K steps.

    ns_dtype=bfloat16: float32 parameter / momentum (as in the script), NS on a
    bf16 copy, the bf16 NS output added to the float32 parameter.
    ns_dtype=float64: identical algorithm with everything in float64.
    ns_dtype=float32: everything float32 (only used by a self-check).

    A 3-D [E, r, c] tensor is treated as E independent (r, c) matrices: the
    2-D rule (NS + 0.2*sqrt(max(r, c)) scale) per expert slice.  The script
    itself asserts ndim == 2 (and its g.view(g.size(0), -1) would flatten the
    experts into one matrix); this per-expert extension is the project rule.
    """
    state_dtype = torch.float64 if ns_dtype == torch.float64 else torch.float32
    p = w0.to(state_dtype).clone()
    buf = torch.zeros_like(p)
    out = []
    for g_in in grads:
        g = g_in.to(state_dtype)
        buf.mul_(MOMENTUM).add_(g)                 # sum-form momentum
        u = g.add(buf, alpha=MOMENTUM) if NESTEROV else buf
        if p.ndim == 2:
            pairs = [(p, u)]
        else:
            pairs = [(p[e], u[e]) for e in range(p.shape[0])]
        for p_mat, u_mat in pairs:
            o = moonlight_newton_schulz(u_mat, NS_STEPS, ns_dtype)
            rows, cols = p_mat.shape[:2]
            adjusted_lr = MUON_LR * (0.2 * math.sqrt(max(rows, cols)))
            p_mat.mul_(1 - MUON_LR * WEIGHT_DECAY)  # decay with un-adjusted lr
            p_mat.add_(o, alpha=-adjusted_lr)       # bf16 o is promoted to p's dtype
        out.append(p.clone())
    return out, buf


# ----------------------------------------------------------------------------
# (b) the real torch.optim.Muon, optionally with a float64 NS twin.
# ----------------------------------------------------------------------------
def _find_torch_ns_name():
    names = [n for n in vars(torch_muon_module)
             if "newtonschulz" in n.lower() and callable(getattr(torch_muon_module, n))]
    if len(names) != 1:
        raise RuntimeError(f"cannot identify torch's NS function in torch.optim._muon: {names}")
    return names[0]


TORCH_NS_NAME = _find_torch_ns_name()
TORCH_NS_ORIGINAL = getattr(torch_muon_module, TORCH_NS_NAME)


def torch_ns_float64(grad, ns_coefficients, ns_steps, eps):
    """float64 twin of torch.optim._muon's NS: same argument checks, same
    transposition rule (rows > cols), same X / clamp(||X||_F, min=eps), same
    addmm formulation -- only the iteration dtype differs."""
    if ns_steps >= 100:
        raise ValueError("ns_steps must be < 100")
    if grad.ndim != 2:
        raise ValueError("gradient must be 2-D")
    if len(ns_coefficients) != 3:
        raise ValueError("need exactly 3 coefficients")
    a, b, c = ns_coefficients
    x = grad.to(torch.float64)
    transposed = grad.size(0) > grad.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)   # b*G + c*G@G
        x = torch.addmm(x, poly, x, beta=a)                     # a*X + poly@X
    if transposed:
        x = x.T
    return x


@contextlib.contextmanager
def torch_ns_patched(use_float64, calls):
    """Install a counting wrapper around the NS function torch's Muon looks up
    in its module globals (float64 twin or the original)."""
    target = torch_ns_float64 if use_float64 else TORCH_NS_ORIGINAL

    def counting(grad, ns_coefficients, ns_steps, eps):
        o = target(grad, ns_coefficients, ns_steps, eps)
        calls.append(o.dtype)
        return o

    # the step function must resolve the name through this module's globals
    assert torch_muon_module._single_tensor_muon.__globals__ is vars(torch_muon_module)
    setattr(torch_muon_module, TORCH_NS_NAME, counting)
    try:
        yield
    finally:
        setattr(torch_muon_module, TORCH_NS_NAME, TORCH_NS_ORIGINAL)


def torch_muon_run(w0, grads, adjust_lr_fn, use_float64):
    dtype = torch.float64 if use_float64 else torch.float32
    p = torch.nn.Parameter(w0.to(dtype).clone())
    opt = torch.optim.Muon(
        [p], lr=MUON_LR, weight_decay=WEIGHT_DECAY, momentum=MOMENTUM,
        nesterov=NESTEROV, ns_coefficients=NS_COEFFICIENTS, eps=NS_EPS,
        ns_steps=NS_STEPS, adjust_lr_fn=adjust_lr_fn)
    calls = []
    out = []
    with torch_ns_patched(use_float64, calls):
        for g in grads:
            p.grad = g.to(dtype).clone()
            opt.step()
            out.append(p.detach().clone())
    want = torch.float64 if use_float64 else torch.bfloat16
    if len(calls) != len(grads) or any(d != want for d in calls):
        raise AssertionError(f"NS calls {calls}, expected {len(grads)} x {want}")
    if p.dtype != dtype:
        raise AssertionError("parameter dtype changed")
    return out, opt.state[p]["momentum_buffer"].clone()


# ----------------------------------------------------------------------------
# Independent formula-level Muon (docs/algorithms.md section 1), float64, used only
# by the self-checks.
# ----------------------------------------------------------------------------
def formula_muon_f64(w0, grads, momentum_form, eps_mode, scale_mode):
    a, b, c = NS_COEFFICIENTS
    w = w0.double().clone()
    m = torch.zeros_like(w)
    out = []
    for g in grads:
        g = g.double()
        if momentum_form == "sum":
            m = MOMENTUM * m + g
            u = g + MOMENTUM * m
        else:
            m = MOMENTUM * m + (1 - MOMENTUM) * g
            u = (1 - MOMENTUM) * g + MOMENTUM * m
        rows, cols = w.shape
        x = u.T if rows > cols else u
        n = torch.linalg.matrix_norm(x, ord="fro")
        x = x / (n + NS_EPS) if eps_mode == "add" else x / torch.maximum(n, torch.tensor(NS_EPS, dtype=torch.float64))
        for _ in range(NS_STEPS):
            s = x @ x.T
            x = a * x + (b * s + c * (s @ s)) @ x
        o = x.T if rows > cols else x
        scale = 0.2 * math.sqrt(max(rows, cols)) if scale_mode == "match_adamw_rms" \
            else math.sqrt(max(1.0, rows / cols))
        w = w * (1 - MUON_LR * WEIGHT_DECAY) - MUON_LR * scale * o
        out.append(w.clone())
    return out


# ----------------------------------------------------------------------------
# (c) the real torch.optim.AdamW, plus a formula twin for checking.
# ----------------------------------------------------------------------------
def torch_adamw_run(w0, grads, dtype):
    p = torch.nn.Parameter(w0.to(dtype).clone())
    opt = torch.optim.AdamW([p], lr=ADAMW_LR, betas=ADAM_BETAS, eps=ADAM_EPS,
                            weight_decay=WEIGHT_DECAY, foreach=False, fused=False)
    out = []
    for g in grads:
        p.grad = g.to(dtype).clone()
        opt.step()
        out.append(p.detach().clone())
    return out


def formula_adamw_f64(w0, grads):
    b1, b2 = ADAM_BETAS
    w = w0.double().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g.double()
        w = w * (1 - ADAMW_LR * WEIGHT_DECAY)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        w = w - ADAMW_LR * mhat / (vhat.sqrt() + ADAM_EPS)
        out.append(w.clone())
    return out


# ----------------------------------------------------------------------------
# Output and comparison helpers
# ----------------------------------------------------------------------------
def base_metadata():
    return {
        "torch_version": torch.__version__,
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "steps": str(K),
        "weight_decay": fmt(WEIGHT_DECAY),
        "betas": "n/a", "adam_eps": "n/a",
        "momentum": "n/a", "nesterov": "n/a", "momentum_form": "n/a",
        "ns_steps": "n/a", "ns_eps": "n/a", "ns_dtype": "n/a",
        "ns_coefficients": "n/a", "scale_mode": "n/a", "eps_mode": "n/a",
        "update_scale": "n/a", "adjust_lr_fn": "n/a", "adam_eps_mode": "n/a",
        "note": "",
    }


def muon_metadata():
    md = base_metadata()
    md.update({
        "lr": fmt(MUON_LR),
        "momentum": fmt(MOMENTUM),
        "nesterov": "true" if NESTEROV else "false",
        "ns_steps": str(NS_STEPS),
        "ns_eps": fmt(NS_EPS),
        "ns_coefficients": ",".join(fmt(c) for c in NS_COEFFICIENTS),
    })
    return md


def write_case(out_dir, case, w0, grads, ws, expected_dtype, metadata, written, extra=None):
    """`extra`: more tensors to store as they are (make_normuon_fixtures.py's V1..VK)."""
    tensors = {"W0": w0.to(torch.float32).contiguous()}
    tensors.update(extra or {})
    for t, (g, w) in enumerate(zip(grads, ws), start=1):
        tensors[f"G{t}"] = g.to(torch.float32).contiguous()
        tensors[f"W{t}"] = w.to(expected_dtype).contiguous()
        if expected_dtype == torch.float32:
            assert w.dtype == torch.float32, "float32 expectation must not be rounded from another dtype"
    md = dict(metadata)
    md["case"] = case
    md["shape"] = ",".join(str(d) for d in w0.shape)
    md["expected_dtype"] = {torch.float32: "float32", torch.float64: "float64"}[expected_dtype]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in md.items())
    path = os.path.join(out_dir, f"{case}.safetensors")
    save_file(tensors, path, metadata=md)
    canonicalize_header(path)
    with safe_open(path, framework="pt") as f:       # read back and verify
        assert f.metadata() == md
        assert sorted(f.keys()) == sorted(tensors)
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t), name
    written.append(path)


def canonicalize_header(path):
    """safetensors writes the metadata map in hash order, so two runs give
    different bytes.  Rewrite the JSON header with sorted keys (same tensors,
    same data offsets, space padding to 8 bytes as the format allows) so a
    regeneration is byte-identical."""
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__").items()))}
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data)


def traj_diff(ws_a, ws_b, w0):
    """max |A_t - B_t| over steps and elements; that divided by max|B_t - W0|
    (the size of the accumulated update); and the Frobenius relative error
    of the accumulated update ||(A_t-W0)-(B_t-W0)|| / ||B_t-W0||, worst t."""
    w0 = w0.double()
    max_abs = 0.0
    max_upd = 0.0
    upd_rel = 0.0
    for a, b in zip(ws_a, ws_b):
        a, b = a.double(), b.double()
        max_abs = max(max_abs, (a - b).abs().max().item())
        max_upd = max(max_upd, (b - w0).abs().max().item())
        upd_rel = max(upd_rel, ((a - b).norm() / (b - w0).norm()).item())
    return max_abs, max_abs / max_upd, upd_rel


class Checks:
    def __init__(self):
        self.failures = []
        self.rows = []

    def compare(self, label, ws_a, ws_b, w0, max_abs_tol=None, upd_rel_tol=None):
        max_abs, rel_to_update, upd_rel = traj_diff(ws_a, ws_b, w0)
        ok = (max_abs_tol is None or max_abs <= max_abs_tol) and \
             (upd_rel_tol is None or upd_rel <= upd_rel_tol)
        tol = []
        if max_abs_tol is not None:
            tol.append(f"abs<={max_abs_tol:.0e}")
        if upd_rel_tol is not None:
            tol.append(f"upd_rel<={upd_rel_tol:.0e}")
        line = (f"{'ok  ' if ok else 'FAIL'} {label:<62} max_abs={max_abs:.3e} "
                f"max_abs/max|dW|={rel_to_update:.3e} upd_rel_fro={upd_rel:.3e}  [{', '.join(tol)}]")
        print(line)
        self.rows.append((label, max_abs, rel_to_update, upd_rel))
        if not ok:
            self.failures.append(line)

    def require(self, cond, message):
        print(f"{'ok  ' if cond else 'FAIL'} {message}")
        if not cond:
            self.failures.append(message)


def same_bits(xs, ys):
    return all(torch.equal(x, y) for x, y in zip(xs, ys))


def detect_momentum_form(buf, grads):
    """Compare a momentum buffer with the closed forms of both conventions."""
    ref_sum = torch.zeros_like(grads[0], dtype=torch.float64)
    for g in grads:
        ref_sum = MOMENTUM * ref_sum + g.double()
    ref_ema = (1 - MOMENTUM) * ref_sum
    b = buf.double()
    err_sum = ((b - ref_sum).norm() / ref_sum.norm()).item()
    err_ema = ((b - ref_ema).norm() / ref_ema.norm()).item()
    if err_ema < 1e-5 and err_sum > 0.5:
        return "ema", err_ema, err_sum
    if err_sum < 1e-5 and err_ema > 0.5:
        return "sum", err_ema, err_sum
    return "unknown", err_ema, err_sum


def start(out):
    """Seeds torch, pins it to one thread and deterministic kernels, and empties `out` of fixtures."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.endswith(".safetensors"):
            os.remove(os.path.join(out, name))


# ----------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
    ap.add_argument("--check-compile", action="store_true",
                    help="also compare eager vs torch.compile'd Moonlight NS in bf16 (needs a C++ compiler; informational)")
    args = ap.parse_args()

    start(args.out)

    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"torch NS function: torch.optim._muon.{TORCH_NS_NAME}")
    checks = Checks()
    written = []

    # ---------------- (a) Moonlight ----------------
    print("\n== moonlight.toy_train (sum momentum, X/(||X||+eps), 0.2*sqrt(max(A,B))) ==")
    moon_f64_by_shape = {}
    for shape in MUON_2D_SHAPES + MUON_EXPERT_SHAPES:
        seed, w0, grads, scales = make_data(shape, "muon")
        tag = shape_tag(shape)
        ws_bf16, _ = moonlight_run(w0, grads, torch.bfloat16)
        ws_bf16_again, _ = moonlight_run(w0, grads, torch.bfloat16)
        ws_f64, buf_f64 = moonlight_run(w0, grads, torch.float64)
        moon_f64_by_shape[shape] = ws_f64
        checks.require(same_bits(ws_bf16, ws_bf16_again), f"moonlight_{tag}_bf16 bitwise reproducible")
        form, e_ema, e_sum = detect_momentum_form(buf_f64, grads)
        checks.require(form == "sum", f"moonlight_{tag} momentum buffer is sum form (rel err sum {e_sum:.1e})")
        checks.compare(f"moonlight_{tag}: bf16 vs f64", ws_bf16, ws_f64, w0, upd_rel_tol=0.05)
        # informational: what an all-float32 implementation would see (not saved)
        ws_f32, _ = moonlight_run(w0, grads, torch.float32)
        checks.compare(f"moonlight_{tag}: f32 NS+state (not saved) vs f64", ws_f32, ws_f64, w0,
                       upd_rel_tol=1e-4)
        if len(shape) == 2:
            ref = formula_muon_f64(w0, grads, "sum", "add", "match_adamw_rms")
            checks.compare(f"moonlight_{tag}_f64 vs formula(sum,add,match_adamw_rms)", ws_f64, ref, w0,
                           max_abs_tol=1e-12)
        else:
            # each expert must equal an independent 2-D run on its slice
            for e in range(shape[0]):
                ws_e, _ = moonlight_run(w0[e].contiguous(), [g[e].contiguous() for g in grads], torch.float64)
                checks.require(same_bits([w[e] for w in ws_f64], ws_e),
                               f"moonlight_{tag}_f64 expert {e} == 2-D run on its slice (bitwise)")
        rows, cols = shape[-2:]
        md = muon_metadata()
        md.update({
            "reference": "moonlight.toy_train",
            "source": MOONLIGHT_SOURCE + " (re-implemented: class Muon + zeropower_via_newtonschulz5, eager)",
            "momentum_form": "sum",
            "scale_mode": "match_adamw_rms",
            "eps_mode": "add",
            "update_scale": fmt(0.2 * math.sqrt(max(rows, cols))),
            "seed": str(seed),
            "grad_scales": ",".join(f"{s:.6g}" for s in scales),
        })
        note = ("NS evaluated as in the script: B = b*A + (c*A)@A, X = a*X + B@X, eps added to the norm "
                "in the iteration dtype; eager mode (the script wraps NS in torch.compile)")
        if len(shape) == 3:
            note += ("; 3-D expert stack: the toy script only supports 2-D (asserts ndim == 2), so this case "
                     "applies the 2-D rule to each expert slice [e,:,:] independently (NS per expert, scale from "
                     f"the expert's own ({rows},{cols}) shape); momentum/decay are elementwise")
        md_bf16 = dict(md, ns_dtype="bfloat16", param_dtype="float32",
                       note=note + "; float32 param and momentum, bf16 NS output added to the float32 param")
        md_f64 = dict(md, ns_dtype="float64", param_dtype="float64",
                      note=note + "; everything (param, momentum, NS) in float64 from the float32 W0/G")
        write_case(args.out, f"moonlight_{tag}_bf16", w0, grads, ws_bf16, torch.float32, md_bf16, written)
        write_case(args.out, f"moonlight_{tag}_f64", w0, grads, ws_f64, torch.float64, md_f64, written)

    # ---------------- (b) torch.optim.Muon ----------------
    print("\n== torch.optim.Muon (installed source; f64 = monkeypatched NS) ==")
    for adjust, scale_mode in TORCH_ADJUST_TO_SCALE_MODE.items():
        for shape in MUON_2D_SHAPES:
            seed, w0, grads, scales = make_data(shape, "muon")
            tag = shape_tag(shape)
            case = f"torch_muon_{adjust}_{tag}"
            ws_bf16, buf_bf16 = torch_muon_run(w0, grads, adjust, use_float64=False)
            ws_bf16_again, _ = torch_muon_run(w0, grads, adjust, use_float64=False)
            ws_f64, buf_f64 = torch_muon_run(w0, grads, adjust, use_float64=True)
            checks.require(same_bits(ws_bf16, ws_bf16_again), f"{case}_bf16 bitwise reproducible")
            form, e_ema, e_sum = detect_momentum_form(buf_f64, grads)
            checks.require(form == "ema", f"{case}: torch momentum buffer is EMA form "
                           f"(rel err vs EMA {e_ema:.1e}, vs sum {e_sum:.1e})")
            form32, _, _ = detect_momentum_form(buf_bf16, grads)
            checks.require(form32 == form, f"{case}: same momentum form in the float32 run")
            checks.compare(f"{case}: bf16 (real) vs f64 (patched)", ws_bf16, ws_f64, w0, upd_rel_tol=0.05)
            ref = formula_muon_f64(w0, grads, "ema", "max", scale_mode)
            checks.compare(f"{case}_f64 vs formula(ema,max,{scale_mode})", ws_f64, ref, w0, max_abs_tol=1e-10)
            if adjust == "match_rms_adamw":
                # Moonlight and torch differ only in momentum form (a scalar
                # factor 1-mu on the NS input, removed by the normalisation up
                # to eps) and in eps placement -> near-identical in float64.
                checks.compare(f"{case}_f64 vs moonlight_{tag}_f64 (sum vs ema, eps)", ws_f64,
                               moon_f64_by_shape[shape], w0, upd_rel_tol=1e-5)
            rows, cols = shape
            md = muon_metadata()
            md.update({
                "reference": "torch.optim.Muon",
                "source": f"torch/optim/_muon.py as installed (torch {torch.__version__})",
                "adjust_lr_fn": adjust,
                "momentum_form": form,
                "scale_mode": scale_mode,
                "eps_mode": "max",
                "update_scale": fmt(torch_muon_module._adjust_lr(1.0, adjust, torch.Size(shape))),
                "seed": str(seed),
                "grad_scales": ",".join(f"{s:.6g}" for s in scales),
            })
            note = ("buf.lerp_(g, 1-mu); u = g.lerp(buf, mu); NS on u (X/clamp(||X||,min=eps), "
                    "G=X@X.T, B=addmm(G,G,G,beta=b,alpha=c), X=addmm(X,B,X,beta=a), transposed when rows>cols); "
                    "p.mul_(1-lr*wd); p.add_(O, alpha=-lr*scale)")
            md_bf16 = dict(md, ns_dtype="bfloat16", param_dtype="float32",
                           note=note + "; real torch code path, bf16 NS, float32 param/momentum")
            md_f64 = dict(md, ns_dtype="float64", param_dtype="float64",
                          note=note + f"; real torch step code with float64 param/grad and "
                                      f"torch.optim._muon.{TORCH_NS_NAME} monkeypatched by a float64 twin")
            write_case(args.out, f"{case}_bf16", w0, grads, ws_bf16, torch.float32, md_bf16, written)
            write_case(args.out, f"{case}_f64", w0, grads, ws_f64, torch.float64, md_f64, written)

    # cross-implementation bf16 comparison (informational + loose bound)
    print("\n== bf16 cross-checks (informational) ==")
    for shape in MUON_2D_SHAPES:
        _, w0, grads, _ = make_data(shape, "muon")
        moon_bf16, _ = moonlight_run(w0, grads, torch.bfloat16)
        torch_bf16, _ = torch_muon_run(w0, grads, "match_rms_adamw", use_float64=False)
        checks.compare(f"moonlight_{shape_tag(shape)}_bf16 vs torch_muon_match_rms_adamw bf16", moon_bf16,
                       torch_bf16, w0, upd_rel_tol=0.05)
    for shape in MUON_2D_SHAPES:
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(shape, generator=gen)
        o_torch = TORCH_NS_ORIGINAL(x, NS_COEFFICIENTS, NS_STEPS, NS_EPS).double()
        o_moon = moonlight_newton_schulz(x, NS_STEPS, torch.bfloat16).double()
        o_64 = torch_ns_float64(x, NS_COEFFICIENTS, NS_STEPS, NS_EPS)
        sv = torch.linalg.svdvals(o_64)
        checks.require(0.5 < sv.max().item() < 1.25,
                       f"NS f64 {shape_tag(shape)}: singular values in [{sv.min().item():.3f}, {sv.max().item():.3f}]")
        print(f"     NS {shape_tag(shape)} single call: max|torch bf16 - f64|={(o_torch - o_64).abs().max().item():.3e} "
              f"max|moonlight bf16 - f64|={(o_moon - o_64).abs().max().item():.3e} "
              f"max|torch bf16 - moonlight bf16|={(o_torch - o_moon).abs().max().item():.3e} "
              f"(max|O|={o_64.abs().max().item():.3f})")
    if args.check_compile:
        compiled = torch.compile(moonlight_newton_schulz)
        for shape in MUON_2D_SHAPES:
            gen = torch.Generator().manual_seed(7)
            x = torch.randn(shape, generator=gen)
            o_e = moonlight_newton_schulz(x, NS_STEPS, torch.bfloat16).double()
            o_c = compiled(x, NS_STEPS, torch.bfloat16).double()
            print(f"     torch.compile vs eager Moonlight NS {shape_tag(shape)}: max abs diff "
                  f"{(o_e - o_c).abs().max().item():.3e}")

    # ---------------- (c) torch.optim.AdamW ----------------
    print("\n== torch.optim.AdamW ==")
    for shape in ADAMW_SHAPES:
        seed, w0, grads, scales = make_data(shape, "adamw")
        tag = shape_tag(shape)
        ws64 = torch_adamw_run(w0, grads, torch.float64)
        ws32 = torch_adamw_run(w0, grads, torch.float32)
        checks.compare(f"torch_adamw_{tag}_f64 vs formula", ws64, formula_adamw_f64(w0, grads), w0,
                       max_abs_tol=1e-12)
        checks.compare(f"torch_adamw_{tag}: f32 vs f64", ws32, ws64, w0, max_abs_tol=1e-5)
        md = base_metadata()
        md.update({
            "reference": "torch.optim.AdamW",
            "source": f"torch/optim/adam.py _single_tensor_adam as installed (torch {torch.__version__}), "
                      "foreach=False, fused=False",
            "lr": fmt(ADAMW_LR),
            "betas": ",".join(fmt(b) for b in ADAM_BETAS),
            "adam_eps": fmt(ADAM_EPS),
            "adam_eps_mode": "sqrt(v/(1-beta2^t)) + eps",
            "seed": str(seed),
            "grad_scales": ",".join(f"{s:.6g}" for s in scales),
            "note": ("p.mul_(1-lr*wd); m.lerp_(g,1-beta1); v.mul_(beta2).addcmul_(g,g,value=1-beta2); "
                     "denom=(v.sqrt()/sqrt(1-beta2^t)).add_(eps); p.addcdiv_(m, denom, value=-lr/(1-beta1^t))"),
        })
        write_case(args.out, f"torch_adamw_{tag}_f64", w0, grads, ws64, torch.float64,
                   dict(md, param_dtype="float64"), written)
        write_case(args.out, f"torch_adamw_{tag}_f32", w0, grads, ws32, torch.float32,
                   dict(md, param_dtype="float32"), written)

    return report(written, args.out, checks)


def report(written, out, checks):
    """Prints what was written and the self-checks' outcome; the exit status."""
    total = sum(os.path.getsize(p) for p in written)
    print(f"\nwrote {len(written)} files, {total} bytes in {out}")
    if checks.failures:
        print(f"\n{len(checks.failures)} self-check(s) FAILED:")
        for f in checks.failures:
            print("  " + f)
        return 1
    print("all self-checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
