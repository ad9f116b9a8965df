#!/usr/bin/env python3
"""The index arithmetic of include/muon/backends/cuda.hpp, transliterated into numpy (no GPU needed).

The CUDA backend was written on a machine without a GPU. This script replays, in float64, the
exact cuBLAS calls it makes (column-major GEMM / SYRK semantics with its m, n, k, leading
dimensions, strides and tile-pair pointer offsets) and the loops of its kernels
(tile_pair_pointers_kernel, mirror_lower_kernel, one thread at a time), and compares the results
with row-major numpy references: gemm (all transposes), gram (fp32 SYRK path, bf16 full-GEMM and
tile-pair paths, both sides), and the fused Newton–Schulz (wide and tall, 1, 2 and 4 tiles).
Every line prints a relative error; all must be ~1e-15 or 0 (a NaN means an unwritten element).
Keep it in step with cuda.hpp when the calls change.

    python3 tests/reference/cuda_index_check.py
"""
import numpy as np
rng = np.random.default_rng(0)

def read_cm(buf, off, rows, cols, ld):
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return buf[off + i + j * ld]

def gemm(opa, opb, m, n, k, alpha, A, offa, lda, B, offb, ldb, beta, C, offc, ldc):
    a = read_cm(A, offa, *((k, m) if opa == "T" else (m, k)), lda)
    b = read_cm(B, offb, *((n, k) if opb == "T" else (k, n)), ldb)
    a = a.T if opa == "T" else a
    b = b.T if opb == "T" else b
    assert a.shape == (m, k) and b.shape == (k, n)
    i, j = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    idx = offc + i + j * ldc
    old = C[idx] if beta != 0 else 0
    C[idx] = alpha * (a @ b) + beta * old

def syrk_upper(trans, n, k, alpha, A, offa, lda, beta, C, offc, ldc):
    a = read_cm(A, offa, *((k, n) if trans == "T" else (n, k)), lda)
    a = a.T if trans == "T" else a
    r = alpha * a @ a.T
    for i in range(n):
        for j in range(i, n):
            p = offc + i + j * ldc
            C[p] = r[i, j] + (beta * C[p] if beta != 0 else 0)

def mirror_lower_kernel(C, off, n):  # literal transliteration: grid (T,T), block (32,8)
    T = (n + 31) // 32
    for bi in range(T):
        for bj in range(T):
            if bj < bi: continue
            tile = np.full((32, 33), np.nan)
            for ty in range(8):
                for tx in range(32):
                    for r in range(ty, 32, 8):
                        row, col = bj * 32 + r, bi * 32 + tx
                        if row < n and col < n: tile[r][tx] = C[off + row * n + col]
            for ty in range(8):
                for tx in range(32):
                    for r in range(ty, 32, 8):
                        row, col = bi * 32 + r, bj * 32 + tx
                        if row < n and col < n and col > row: C[off + row * n + col] = tile[tx][r]

def tile_pointers(x_stride, tile_step, c_stride, ldc, t, pairs, entries):
    out = []
    for e in range(entries):
        k = e // pairs; p = e % pairs; q = 0
        while p > q:
            p -= q + 1; q += 1
        out.append((k * x_stride + p * tile_step, k * x_stride + q * tile_step, k * c_stride + p * t + q * t * ldc))
    return out

def backend_gemm(alpha, a, ta, b, tb, beta, c):  # a, b, c: (batch, rows, cols) row-major arrays
    batch = c.shape[0]; m, n = c.shape[1:]
    k = a.shape[1] if ta else a.shape[2]
    A, B, C = a.ravel().copy(), b.ravel().copy(), c.ravel().copy()
    for q in range(batch):
        gemm("T" if tb else "N", "T" if ta else "N", n, m, k, alpha, B, q * b[0].size, b.shape[2],
             A, q * a[0].size, a.shape[2], beta, C, q * m * n, n)
    return C.reshape(c.shape)

def symmetric_tiles(n, tile_min):
    for tiles in (4, 2):
        if n % (64 * tiles) == 0 and n // tiles >= tile_min: return tiles
    return 1

def symmetric_product(X, batch, rows, cols, by_rows, alpha, beta, C, tiles):
    n, inner = (rows, cols) if by_rows else (cols, rows)
    opa, opb = ("T", "N") if by_rows else ("N", "T")
    if tiles == 1:
        for q in range(batch):
            gemm(opa, opb, n, n, inner, alpha, X, q * rows * cols, cols, X, q * rows * cols, cols, beta, C, q * n * n, n)
        return
    t = n // tiles; pairs = tiles * (tiles + 1) // 2; entries = batch * pairs
    tile_step = t * cols if by_rows else t
    for (oa, ob, oc) in tile_pointers(rows * cols, tile_step, n * n, n, t, pairs, entries):
        gemm(opa, opb, t, t, inner, alpha, X, oa, cols, X, ob, cols, beta, C, oc, n)
    for q in range(batch): mirror_lower_kernel(C, q * n * n, n)

def backend_gram(alpha, x, by_rows, beta, c, fp32, tile_min=512):
    batch, rows, cols = x.shape
    n, inner = (rows, cols) if by_rows else (cols, rows)
    X, C = x.ravel().copy(), c.ravel().copy()
    if fp32:
        for q in range(batch):
            syrk_upper("T" if by_rows else "N", n, inner, alpha, X, q * rows * cols, cols, beta, C, q * n * n, n)
        for q in range(batch): mirror_lower_kernel(C, q * n * n, n)
    else:
        symmetric_product(X, batch, rows, cols, by_rows, alpha, beta, C, symmetric_tiles(n, tile_min))
    return C.reshape(c.shape)

def sym(batch, n):
    c = rng.standard_normal((batch, n, n)); return c + c.transpose(0, 2, 1)

err = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
# gemm
for ta in (0, 1):
    for tb in (0, 1):
        m, k, n = 7, 5, 6
        a = rng.standard_normal((2, k, m) if ta else (2, m, k)); b = rng.standard_normal((2, n, k) if tb else (2, k, n))
        c = rng.standard_normal((2, m, n))
        ref = 0.7 * (a.transpose(0, 2, 1) if ta else a) @ (b.transpose(0, 2, 1) if tb else b) + 0.3 * c
        print("gemm", ta, tb, err(backend_gemm(0.7, a, ta, b, tb, 0.3, c), ref))
# gram: fp32 syrk and bf16 tile paths
for rows, cols, by_rows, tile_min in [(37, 53, True, 512), (37, 53, False, 512), (256, 96, True, 64), (80, 128, False, 64),
                                      (200, 72, True, 64), (128, 300, True, 16)]:
    x = rng.standard_normal((2, rows, cols)); n = rows if by_rows else cols
    c = sym(2, n)
    ref = 0.5 * (x @ x.transpose(0, 2, 1) if by_rows else x.transpose(0, 2, 1) @ x) + 0.25 * c
    for fp32 in (True, False):
        if fp32 and tile_min != 512: continue
        got = backend_gram(0.5, x, by_rows, 0.25, c, fp32, tile_min)
        print("gram", rows, cols, by_rows, "fp32" if fp32 else f"tiles={symmetric_tiles(n, tile_min)}", err(got, ref))

# fused Newton–Schulz (float64 in place of bf16)
KELLER = (3.4445, -4.7750, 2.0315)
def ns_reference(x):
    out = []
    for m in x:
        tall = m.shape[0] > m.shape[1]
        X = m.T if tall else m
        X = X / (np.linalg.norm(X) + 1e-7)
        for _ in range(5):
            a, b, c = KELLER
            A = X @ X.T; B = b * A + c * A @ A; X = a * X + B @ X
        out.append(X.T if tall else X)
    return np.array(out)

def fused_ns(x, tile_min):
    batch, rows, cols = x.shape
    wide = rows <= cols; n = min(rows, cols); xs = rows * cols; nn = n * n
    tiles = symmetric_tiles(n, tile_min)
    cur = np.concatenate([(m / (np.linalg.norm(m) + 1e-7)).ravel() for m in x])
    gram = np.full(batch * nn, np.nan); poly = np.full(batch * nn, np.nan)
    for _ in range(5):
        a, b, c = KELLER
        gram[:] = np.nan
        symmetric_product(cur, batch, rows, cols, wide, 1.0, 0.0, gram, tiles)
        poly[:] = gram
        symmetric_product(gram, batch, n, n, True, c, b, poly, tiles)
        nxt = cur.copy()
        left, right = (cur, poly) if wide else (poly, cur)
        for q in range(batch):
            gemm("N", "N", cols, rows, n, 1.0, left, q * (xs if wide else nn), cols if wide else n,
                 right, q * (nn if wide else xs), n if wide else cols, a, nxt, q * xs, cols)
        cur = nxt
    return cur.reshape(x.shape)

for rows, cols, tile_min in [(48, 80, 512), (80, 48, 512), (128, 256, 16), (256, 128, 16), (256, 384, 64)]:
    x = rng.standard_normal((2, rows, cols))
    print("ns", rows, cols, "tiles", symmetric_tiles(min(rows, cols), tile_min), err(fused_ns(x, tile_min), ns_reference(x)))
