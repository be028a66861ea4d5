#!/usr/bin/env python3
"""How far Winograd F(m x m, 3x3) lands from the exact convolution when its operands are bf16.

The CPU engine's bf16 Winograd rounds the transformed input V = Bᵀ d B and the transformed
weights U = G g Gᵀ to bf16 (its operands) and the products M = Σ V U to bf16 (its scratch)
before Y = Aᵀ M A. This builds each transform's matrices by Toom-Cook from its points (exact
rationals), checks them in float64, and prints the median largest error of an output block
over random 64-channel tiles (unit normal inputs, weights scaled to unit-size outputs):
with every rounding, and with the operands' or the products' alone.

    python3 tools/winograd_bf16_error.py      # needs numpy and sympy
"""
import numpy as np
import sympy as sp

CHANNELS, TRIALS = 64, 60
rng = np.random.default_rng(0)


def toom_cook(points, m, r=3):
    """Aᵀ (m x n), G (n x r) and Bᵀ (n x n) for the finite `points` and infinity."""
    n = m + r - 1
    a = [sp.nsimplify(p) for p in points]
    at, g = sp.zeros(m, n), sp.zeros(n, r)
    for i, ai in enumerate(a):
        scale = sp.prod([ai - al for l, al in enumerate(a) if l != i])
        for k in range(m):
            at[k, i] = ai**k
        for j in range(r):
            g[i, j] = ai**j / scale
    at[m - 1, n - 1] = g[n - 1, r - 1] = 1
    # Bᵀ from the identity Aᵀ (G e_j ⊙ Bᵀ e_i) = [i == k + j] over all unit vectors.
    bt = sp.Matrix(n, n, lambda i, j: sp.Symbol(f"b{i}_{j}"))
    equations = []
    for j in range(r):
        for i in range(n):
            y = at * sp.matrix_multiply_elementwise(g[:, j], bt[:, i])
            equations += [y[k] - (1 if i == k + j else 0) for k in range(m)]
    bt = bt.subs(sp.solve(equations, list(bt)))
    return [np.array(x, dtype=float) for x in (at, g, bt)]


def bf16(x):
    """Round to the nearest bf16, ties to even."""
    bits = np.asarray(x, np.float32).copy().view(np.uint32)
    bits += 0x7FFF + ((bits >> 16) & 1)
    bits &= 0xFFFF0000
    return bits.view(np.float32).astype(np.float64)


def block_error(at, g_matrix, bt, operands, products):
    """Median largest error of an m x m output block; `operands`, `products`: round them."""
    m, n = at.shape
    errors = []
    for _ in range(TRIALS):
        d = rng.standard_normal((CHANNELS, n, n))
        g = rng.standard_normal((CHANNELS, 3, 3)) / np.sqrt(9 * CHANNELS)
        v = np.einsum("ij,cjk,lk->cil", bt, d, bt)
        u = np.einsum("ij,cjk,lk->cil", g_matrix, g, g_matrix)
        if operands:
            v, u = bf16(v), bf16(u)
        mm = (v * u).sum(0)
        if products:
            mm = bf16(mm)
        y = at @ mm @ at.T
        exact = np.array(
            [[(g * d[:, a : a + 3, b : b + 3]).sum() for b in range(m)] for a in range(m)]
        )
        errors.append(np.abs(y - exact).max())
    return np.median(errors)


half = sp.Rational(1, 2)
print(f"median largest error of an output block, {CHANNELS} channels, {TRIALS} tiles")
print("transform (points)            exact    all bf16  operands  products")
for name, points, m in [
    ("F(2x2) {0, 1, -1}", [0, 1, -1], 2),
    ("F(3x3) {0, 1, -1, 1/2}", [0, 1, -1, half], 3),
    ("F(3x3) {0, 1, -1, 2}", [0, 1, -1, 2], 3),
    ("F(4x4) {0, 1, -1, 2, -2}", [0, 1, -1, 2, -2], 4),
    ("F(4x4) {0, 1, -1, 1/2, -2}", [0, 1, -1, half, -2], 4),
]:
    at, g, bt = toom_cook(points, m)
    row = [block_error(at, g, bt, *flags) for flags in [(0, 0), (1, 1), (1, 0), (0, 1)]]
    print(f"{name:28s} " + "  ".join(f"{e:.1e}" for e in row))
