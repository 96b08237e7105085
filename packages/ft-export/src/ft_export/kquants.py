"""llama.cpp's K-quants (Q4_K, Q5_K, Q6_K) in numpy, bit for bit as its reference quantizers.

`quantize_row_q4_K_ref`, `quantize_row_q5_K_ref` and `quantize_row_q6_K_ref` of ggml's
`ggml-quants.c` are what `llama-quantize` runs when it has no importance matrix. They search,
per sub-block of 32 (16 for Q6_K) weights, the scale (and minimum) that best fits the weights,
then quantize the sub-block scales to 6 or 8 bits under one f16 scale per super-block of 256.

The functions here do the same float32 arithmetic in the same order, vectorized over the
sub-blocks instead of looping over them: every sum runs position by position, as C's loops do
(numpy's own `sum` pairs terms and would round differently), products keep C's left-to-right
grouping, and `nearest_int` (C's round-half-to-even trick) is `np.rint`. The output is the bytes
of ggml's `block_q4_K`/`block_q5_K`/`block_q6_K`, checked against test vectors made with the C
code (tests/data/quant-reference.safetensors, made by tests/make_quant_vectors.c).

One difference can remain: C compilers that contract `a*b + c` into one fused multiply-add
(Apple's clang on arm64 does by default) round a few sums differently, so llama.cpp built there
can differ from these bytes in a rare last bit of a scale. x86-64 builds without `-mfma`, which
is what the vectors were made with, do not contract.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
"""Weights per super-block."""

BLOCK_BYTES = {"q4_K": 144, "q5_K": 176, "q6_K": 210}
"""Bytes of one 256-weight block (ggml's sizeof(block_q4_K) etc.)."""

_GROUP_MAX_EPS = np.float32(1e-15)
_CHUNK_BLOCKS = 4096
"""Super-blocks quantized at a time: keeps the (32, n) work arrays near the CPU caches."""

f32 = np.float32


def _sum(terms: np.ndarray) -> np.ndarray:
    """`float s = 0; for (i...) s += terms[i];` over axis 0, in C's order."""
    total = terms[0] + f32(0)
    for row in terms[1:]:
        total += row
    return total


def _nearest(values: np.ndarray) -> np.ndarray:
    """ggml's `nearest_int`: round half to even (the `+ 12582912.f` trick), as float32."""
    return np.rint(values)


def _to_f16(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16)


def _make_qkx2_quants(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's `make_qkx2_quants` (use_mad false) on every column of `x` (n, subblocks).

    Returns (scale, the_min, L): L as float32 levels 0..nmax, shape like `x`."""
    w = weights
    lo = x.min(axis=0)
    hi = x.max(axis=0)
    # C starts the sums at element 0, not at 0.0
    sum_w = w[0].copy()
    sum_x = w[0] * x[0]
    for i in range(1, x.shape[0]):
        sum_w += w[i]
        sum_x += w[i] * x[i]
    lo = np.minimum(lo, f32(0))
    flat = hi == lo
    nmax_f = f32(nmax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        span = hi - lo
        iscale = nmax_f / span
        scale = f32(1) / iscale
        levels = np.clip(_nearest(iscale * (x - lo)), 0, nmax_f)
        diff = scale * levels + lo - x
        best_error = _sum(w * (diff * diff))
        for step in range(nstep + 1):
            iscale = (f32(rmin) + f32(rdelta) * f32(step) + nmax_f) / (hi - lo)
            aux = np.clip(_nearest(iscale * (x - lo)), 0, nmax_f)
            wl = w * aux
            sum_l = _sum(wl)
            sum_l2 = _sum(wl * aux)
            sum_xl = _sum(wl * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_min = np.where(positive, f32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            diff = this_scale * aux + this_min - x
            cur_error = _sum(w * (diff * diff))
            better = (det > 0) & (cur_error < best_error) & ~flat
            if better.any():
                levels = np.where(better, aux, levels)
                best_error = np.where(better, cur_error, best_error)
                scale = np.where(better, this_scale, scale)
                lo = np.where(better, this_min, lo)
    levels = np.where(flat, f32(0), levels)
    scale = np.where(flat, f32(0), scale)
    return scale.astype(f32), (-lo).astype(f32), levels


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The 12 bytes of 6-bit scales and mins of a Q4_K/Q5_K block (ls, lm: (blocks, 8))."""
    out = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, 0:4]
    out[:, 4:8] = lm[:, 0:4]
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return out


def _k4_block(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int) -> tuple:
    """The common part of Q4_K and Q5_K for `x` (blocks, 256): per-block d and dmin (f16),
    the 12 scale bytes and the final levels (blocks, 256) as uint8."""
    blocks = x.shape[0]
    sub = np.ascontiguousarray(x.reshape(blocks * 8, 32).T)  # (32, subblocks)
    av_x = np.sqrt(_sum(sub * sub) / f32(32))
    weights = av_x + np.abs(sub)
    scales, mins, levels = _make_qkx2_quants(sub, weights, nmax, rmin, rdelta, nstep)
    scales = scales.reshape(blocks, 8)
    mins = mins.reshape(blocks, 8)
    max_scale = scales.max(axis=1)
    max_scale = np.where(max_scale > 0, max_scale, f32(0))
    max_min = mins.max(axis=1)
    max_min = np.where(max_min > 0, max_min, f32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, f32(63) / max_scale, f32(0)).astype(f32)
        inv_min = np.where(max_min > 0, f32(63) / max_min, f32(0)).astype(f32)
    # C stores nearest_int(...) in a uint8_t before MIN(63, ...): keep the wrap-around
    ls = np.minimum(_nearest(inv_scale[:, None] * scales).astype(np.int64) & 0xFF, 63)
    lm = np.minimum(_nearest(inv_min[:, None] * mins).astype(np.int64) & 0xFF, 63)
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    d = _to_f16(max_scale / f32(63))
    dmin = _to_f16(max_min / f32(63))
    d_sub = (d.astype(f32)[:, None] * ls.astype(f32)).reshape(-1)  # (subblocks,)
    dm_sub = (dmin.astype(f32)[:, None] * lm.astype(f32)).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        final = np.clip(_nearest((sub + dm_sub) / d_sub), 0, f32(nmax))
    levels = np.where(d_sub != 0, final, levels)  # a zero scale keeps the search's levels
    levels = levels.T.reshape(blocks, QK_K).astype(np.uint8)
    return d, dmin, _pack_scales_k4(ls, lm), levels


def _q4_k(x: np.ndarray) -> np.ndarray:
    blocks = x.shape[0]
    d, dmin, scales, levels = _k4_block(x, 15, -1.0, 0.1, 20)
    chunks = levels.reshape(blocks, 4, 2, 32)  # 64 weights: low nibbles, then high
    qs = (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(blocks, 128)
    return np.concatenate(
        [d.view(np.uint8).reshape(blocks, 2), dmin.view(np.uint8).reshape(blocks, 2), scales, qs],
        axis=1,
    )


def _q5_k(x: np.ndarray) -> np.ndarray:
    blocks = x.shape[0]
    d, dmin, scales, levels = _k4_block(x, 31, -0.5, 0.1, 15)
    chunks = levels.reshape(blocks, 4, 2, 32)
    low = chunks & 0xF
    high = (chunks >> 4).astype(np.uint8)  # the fifth bit
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(blocks, 128)
    shifts = (2 * np.arange(4, dtype=np.uint8))[None, :, None]
    qh = ((high[:, :, 0] << shifts) | (high[:, :, 1] << (shifts + 1))).astype(np.uint8)
    qh = np.bitwise_or.reduce(qh, axis=1)  # (blocks, 32)
    return np.concatenate(
        [
            d.view(np.uint8).reshape(blocks, 2),
            dmin.view(np.uint8).reshape(blocks, 2),
            scales,
            qh,
            qs,
        ],
        axis=1,
    )


def _make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's `make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)` on every column of `x`.

    Returns (scale, L) with L as float32 levels 0..2*nmax-1."""
    columns = np.arange(x.shape[1])
    biggest = x[np.argmax(np.abs(x), axis=0), columns]  # the first of equal magnitudes, as C
    zero = np.abs(biggest) < _GROUP_MAX_EPS
    nmax_f = f32(nmax)
    w = x * x
    wx = w * x

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ints = np.clip(_nearest(iscale * x), -nmax_f, nmax_f - 1)
        return ints, _sum(wx * ints), _sum(w * ints * ints)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ints, sumlx, suml2 = fit(-nmax_f / biggest)
        levels = ints + nmax_f
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            ints, sumlx, suml2 = fit(-(nmax_f + f32(0.1) * f32(step)) / biggest)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2) & ~zero
            if better.any():
                levels = np.where(better, ints + nmax_f, levels)
                scale = np.where(better, sumlx / suml2, scale)
                best = np.where(better, scale * sumlx, best)
    levels = np.where(zero, f32(0), levels)
    scale = np.where(zero, f32(0), scale)
    return scale.astype(f32), levels


def _q6_k(x: np.ndarray) -> np.ndarray:
    blocks = x.shape[0]
    sub = np.ascontiguousarray(x.reshape(blocks * 16, 16).T)  # (16, subblocks)
    scales, levels = _make_qx_quants_rmse1(sub, 32)
    scales = scales.reshape(blocks, 16)
    first = np.argmax(np.abs(scales), axis=1)  # C keeps the first strictly larger magnitude
    max_scale = scales[np.arange(blocks), first]
    empty = np.abs(max_scale) < _GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = f32(-128) / max_scale
        d = _to_f16(f32(1) / iscale)
        sc = np.minimum(_nearest(iscale[:, None] * scales), f32(127))
    sc = np.where(empty[:, None], f32(0), sc).astype(np.int8)
    d = np.where(empty, np.float16(0), d)
    d_sub = (d.astype(f32)[:, None] * sc.astype(f32)).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        final = np.clip(_nearest(sub / d_sub), f32(-32), f32(31)) + f32(32)
    levels = np.where(d_sub != 0, final, levels)
    levels = levels.T.reshape(blocks, QK_K).astype(np.uint8)
    levels[empty] = 0
    halves = levels.reshape(blocks, 2, 4, 32)  # per 128: L[l], L[l+32], L[l+64], L[l+96]
    low = halves & 0xF
    ql = np.concatenate(
        [low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2
    ).reshape(blocks, 128)
    top = halves >> 4
    qh = (top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)).reshape(
        blocks, 64
    )
    return np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(blocks, 2)], axis=1)


_QUANTIZERS = {"q4_K": _q4_k, "q5_K": _q5_k, "q6_K": _q6_k}


def quantize_k(values: np.ndarray, kind: str) -> np.ndarray:
    """Quantize `values` (float32, last axis a multiple of 256) as `kind` (q4_K, q5_K or q6_K).

    Returns uint8 of shape (*values.shape[:-1], row bytes), the bytes llama.cpp writes."""
    if values.shape[-1] % QK_K:
        raise ValueError(
            f"{kind} needs rows of a multiple of {QK_K} values, not {values.shape[-1]}"
        )
    quantizer = _QUANTIZERS[kind]
    flat = np.ascontiguousarray(values, dtype=f32).reshape(-1, QK_K)
    out = np.empty((flat.shape[0], BLOCK_BYTES[kind]), dtype=np.uint8)
    for start in range(0, flat.shape[0], _CHUNK_BLOCKS):
        out[start : start + _CHUNK_BLOCKS] = quantizer(flat[start : start + _CHUNK_BLOCKS])
    row_bytes = values.shape[-1] // QK_K * BLOCK_BYTES[kind]
    return out.reshape(*values.shape[:-1], row_bytes)
