#!/usr/bin/env python3
"""Where the bf16 bounds of tests/test_cuda.cu come from (no GPU needed; numpy only).

Emulates the CUDA backend's arithmetic on the CPU: bf16 rounding (nearest even) where the
backend stores bf16, fp32 accumulation in the products. Prints, over 20 random matrices per shape
(uniform in [-0.5, 0.5), as the test's data), the largest max|x - y| / max|y| of:
  - the fused bf16 Newton–Schulz (X, A, B stored in bf16) against fp32 NS;
  - two fused bf16 runs whose fp32 accumulations differ (batched against looped cuBLAS kernels);
  - the portable per-operation bf16 Gram Newton–Schulz (fp32 buffers, operands rounded to bf16
    before each product) against fp32 NS;
  - two fp32 runs whose accumulations differ.
The test bounds are about twice these. Measured 2026-11-23 (numpy 2.4):
  fused vs fp32 ≤ 0.037; fused pair ≤ 0.028; Gram per-op vs fp32 ≤ 0.084 (0.095 with
  another seed); fp32 pair ≤ 3.8e-6.

    python3 tests/reference/cuda_bf16_tolerances.py
"""
import numpy as np

KELLER = (3.4445, -4.7750, 2.0315)


def bf16(a):
    bits = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def fp32(a):
    return np.asarray(a, dtype=np.float32)


def matmul(a, b, order):
    """An fp32 result; `order` 0 sums in fp32, 1 in fp64 (two accumulation orders)."""
    t = np.float32 if order == 0 else np.float64
    return (a.astype(t) @ b.astype(t)).astype(np.float32)


def normalized(x):
    return (x / (np.linalg.norm(x.astype(np.float64)) + 1e-7)).astype(np.float32)


def plain_ns(x, store, order=0):
    """Plain NS, every stored value passed through `store` (bf16 for the fused path)."""
    tall = x.shape[0] > x.shape[1]
    X = store(normalized(x.T if tall else x))
    a, b, c = KELLER
    for _ in range(5):
        A = store(matmul(X, X.T, order))
        B = store(b * A + c * matmul(A, A, order))
        X = store(a * X + matmul(B, X, order))
    return X.T if tall else X


def gram_ns_per_op(x, operand):
    """orthogonalize.hpp's Gram NS (restart every 2), each product's operands through `operand`."""
    mm = lambda p, q: matmul(operand(p), operand(q), 0)
    tall = x.shape[0] > x.shape[1]
    X = normalized(x.T if tall else x)
    eye = np.eye(X.shape[0], dtype=np.float32)
    a, b, c = KELLER
    restart = lambda k: k > 0 and k % 2 == 0
    R, Q, q_identity = mm(X, X.T), None, True
    for k in range(5):
        if restart(k):
            X = mm(Q, X)
            R, q_identity = mm(X, X.T), True
        P = fp32(a * eye + b * R + c * mm(R, R.T))
        Q, q_identity = (P.copy() if q_identity else mm(P, Q)), False
        if k + 1 < 5 and not restart(k + 1):
            R = mm(mm(P, R), P)
    X = mm(Q, X)
    return X.T if tall else X


def rel(x, y):
    return np.abs(x - y).max() / np.abs(y).max()


def main():
    rng = np.random.default_rng(1)
    for rows, cols in [(48, 80), (80, 48), (128, 256), (256, 128), (24, 40), (16, 24)]:
        fused, pair, f32 = 0.0, 0.0, 0.0
        for _ in range(20):
            x = rng.random((rows, cols), dtype=np.float32) - 0.5
            ref = plain_ns(x, fp32, 1)
            fused = max(fused, rel(plain_ns(x, bf16, 0), ref))
            pair = max(pair, rel(plain_ns(x, bf16, 0), plain_ns(x, bf16, 1)))
            f32 = max(f32, rel(plain_ns(x, fp32, 0), ref))
        print(f"{rows}x{cols}: fused bf16 vs fp32 {fused:.3g}, fused pair {pair:.3g}, fp32 pair {f32:.3g}")
    for rows, cols in [(32, 96), (96, 32), (64, 224)]:
        worst = 0.0
        for _ in range(20):
            x = rng.random((rows, cols), dtype=np.float32) - 0.5
            worst = max(worst, rel(gram_ns_per_op(x, bf16), plain_ns(x, fp32, 1)))
        print(f"{rows}x{cols}: per-operation bf16 Gram NS vs fp32 {worst:.3g}")


if __name__ == "__main__":
    main()
