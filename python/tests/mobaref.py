"""An independent float64 NumPy MoBA (the semantics of include/moba.h), plus bf16 bit helpers, for the tests.

Written from the spec, not from libmoba: per sequence and q head, centroids of full key blocks rounded to the
storage dtype, top (top_k - 1) history blocks by <q, centroid> (ties -> lower block), plus the own block, then
causal softmax attention over the selected keys, and its gradient with routing held fixed.
"""
import math

import numpy as np


def bf16_bits_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """Round-to-nearest-even float32 -> bfloat16 raw bits (finite inputs)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)


def round_to(x, storage):
    """x rounded to the storage dtype ("float32", "float16", "bfloat16"), returned as float64."""
    if storage == "float32":
        return np.asarray(x, dtype=np.float32).astype(np.float64)
    if storage == "float16":
        return np.asarray(x, dtype=np.float16).astype(np.float64)
    return bf16_bits_to_f32(f32_to_bf16_bits(np.asarray(x, dtype=np.float32))).astype(np.float64)


def selected_blocks(qs, ks, block_size, top_k, storage):
    """Bool [L, num_blocks]: which blocks each query of one sequence (one head) attends."""
    L, d = qs.shape
    nblocks = -(-L // block_size)
    nfull = L // block_size
    own = np.arange(L) // block_size
    sel = np.zeros((L, nblocks), dtype=bool)
    sel[np.arange(L), own] = True
    if nfull and top_k > 1:
        cent = round_to(ks[: nfull * block_size].reshape(nfull, block_size, d).mean(axis=1), storage)
        scores = qs.astype(np.float32) @ cent.astype(np.float32).T  # the gate is fp32
        scores = np.where(np.arange(nfull)[None, :] < own[:, None], scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, : top_k - 1]  # stable: ties -> lower block
        picked = np.take_along_axis(scores, order, axis=1) > -np.inf
        rows = np.repeat(np.arange(L)[:, None], order.shape[1], axis=1)
        sel[rows[picked], order[picked]] = True
    return sel


def moba(q, k, v, cu_seqlens, block_size, top_k, softmax_scale=None, storage="float32", do=None):
    """float64 reference. q [T, Hq, d], k/v [T, Hkv, d] as float64 values of the stored inputs.
    Returns dict(o, lse, route) and, if do is given, dq, dk, dv."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    T, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else softmax_scale
    o = np.zeros_like(q)
    lse = np.zeros((hq, T))
    route = np.full((hq, T, top_k), -1, dtype=np.int32)
    grads = do is not None
    if grads:
        do = np.asarray(do, dtype=np.float64)
        dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    cu = [int(c) for c in cu_seqlens]
    for s in range(len(cu) - 1):
        a, b = cu[s], cu[s + 1]
        L = b - a
        if L == 0:
            continue
        for h in range(hq):
            kh = h // group
            qs, ks, vs = q[a:b, h], k[a:b, kh], v[a:b, kh]
            sel = selected_blocks(qs, ks, block_size, top_k, storage)
            tt, bb = np.nonzero(sel)  # ascending blocks within each row
            route[h, a + tt, (np.cumsum(sel, axis=1) - 1)[tt, bb]] = bb
            keyblock = np.arange(L) // block_size
            mask = sel[:, keyblock] & (np.arange(L)[None, :] <= np.arange(L)[:, None])
            S = np.where(mask, scale * (qs @ ks.T), -np.inf)
            m = S.max(axis=1, keepdims=True)
            P = np.exp(S - m)
            l = P.sum(axis=1, keepdims=True)
            P /= l
            o[a:b, h] = P @ vs
            lse[h, a:b] = (m + np.log(l))[:, 0]
            if grads:
                dos = do[a:b, h]
                dP = dos @ vs.T
                D = (dos * o[a:b, h]).sum(axis=1, keepdims=True)
                dS = P * (dP - D)
                dq[a:b, h] = scale * dS @ ks
                dk[a:b, kh] += scale * dS.T @ qs
                dv[a:b, kh] += P.T @ dos
    out = {"o": o, "lse": lse, "route": route}
    if grads:
        out.update(dq=dq, dk=dk, dv=dv)
    return out


def rel_err(x, ref):
    """|x - ref|_F / |ref|_F in float64."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def random_case(rng, seqlens, hq, hkv, d, storage="float32"):
    """Fresh random q, k, v, do (standard normal, rounded to the storage dtype; float32 arrays holding the
    rounded values) and cu_seqlens int32."""
    T = int(sum(seqlens))
    cu = np.concatenate([[0], np.cumsum(seqlens)]).astype(np.int32)
    shapes = {"q": (T, hq, d), "k": (T, hkv, d), "v": (T, hkv, d), "do": (T, hq, d)}
    arrays = {n: round_to(rng.standard_normal(s), storage).astype(np.float32) for n, s in shapes.items()}
    return arrays, cu


def to_storage(x32, storage, bf16_spelling="uint16"):
    """A float32 array holding representable values -> a NumPy array in the storage spelling."""
    if storage == "float32":
        return np.ascontiguousarray(x32, dtype=np.float32)
    if storage == "float16":
        return np.ascontiguousarray(x32, dtype=np.float16)
    bits = f32_to_bf16_bits(x32)
    if bf16_spelling == "uint16":
        return bits
    import ml_dtypes
    return bits.view(ml_dtypes.bfloat16)


def from_storage(x):
    """A NumPy output array (float32/float16/ml_dtypes bf16/uint16 bf16 bits) -> float64 values."""
    if x.dtype == np.uint16:
        return bf16_bits_to_f32(x).astype(np.float64)
    if x.dtype.name == "bfloat16":
        return bf16_bits_to_f32(x.view(np.uint16)).astype(np.float64)
    return x.astype(np.float64)
