"""moba.KVCache (decode): appends in pieces, attention for the newest tokens, against prefill and float64.

The C API promises that moba_cache_attend's output for the token at position t is bit for bit moba_forward's row
t over the same q, k, v on the CPU; prefill row t depends only on tokens <= t, so one prefill over the final
sequences judges every decode step. A float64 reference (mobaref) judges both independently.
"""
import numpy as np
import pytest

import moba
from moba import _ops
from mobaref import from_storage, moba as reference, random_case, rel_err, to_storage

TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.5e-2}


def spelled(arrays, storage, spelling):
    if storage == "bfloat16" and spelling == "ml_dtypes":
        pytest.importorskip("ml_dtypes")
    return {n: to_storage(a, storage, spelling or "uint16") for n, a in arrays.items()}


def decode_case(rng, seqlens, hq, hkv, d, B, top_k, storage="float32", spelling=None, page_size=0, capacity=None,
                full_attention=False, threads=0):
    """Appends each sequence's keys in random pieces (0 .. 2B + 3 tokens per sequence per call); after every
    append, attends 0..3 newest tokens per sequence and checks o and lse against the prefill rows bitwise.
    Returns (cache, prefill o, arrays, cu) at the end."""
    arrays, cu = random_case(rng, seqlens, hq, hkv, d, storage)
    x = spelled(arrays, storage, spelling)
    o_ref, lse_ref = moba.attention(x["q"], x["k"], x["v"], cu, B, 10**6 if full_attention else top_k,
                                    return_lse=True, dtype="bfloat16" if storage == "bfloat16" else None)
    n = len(seqlens)
    capacity = capacity or -(-max(seqlens) // (page_size or 1)) * (page_size or 1)
    cache = moba.KVCache(n, capacity, hq, hkv, d, B, top_k, dtype=storage, page_size=page_size, num_threads=threads)
    done = np.zeros(n, dtype=np.int64)
    checked = 0
    while (done < seqlens).any():
        take = [min(int(rng.integers(0, 2 * B + 4)), seqlens[s] - done[s]) for s in range(n)]
        rows = np.concatenate([np.arange(cu[s] + done[s], cu[s] + done[s] + take[s]) for s in range(n)]).astype(int)
        cache.append(x["k"][rows], x["v"][rows], np.concatenate([[0], np.cumsum(take)]))
        done += take
        np.testing.assert_array_equal(cache.seq_lens, done)
        nq = [int(rng.integers(0, min(3, done[s]) + 1)) for s in range(n)]
        qrows = np.concatenate([np.arange(cu[s] + done[s] - nq[s], cu[s] + done[s]) for s in range(n)]).astype(int)
        o, lse = cache.attend(x["q"][qrows], np.concatenate([[0], np.cumsum(nq)]), full_attention=full_attention,
                              return_lse=True)
        assert o.dtype == x["q"].dtype and o.shape == (len(qrows), hq, d)
        assert lse.dtype == np.float32 and lse.shape == (hq, len(qrows))
        np.testing.assert_array_equal(o, o_ref[qrows])
        np.testing.assert_array_equal(lse, lse_ref[:, qrows])
        checked += len(qrows)
    assert checked > 0
    return cache, o_ref, arrays, cu


CASES = [
    # seqlens, hq, hkv, d, B, top_k
    ([150, 1, 77], 4, 2, 16, 16, 3),   # GQA, varlen, a 1-token sequence, partial last blocks
    ([300], 2, 1, 32, 20, 2),          # MQA, B not a power of two
    ([90, 64], 2, 2, 8, 8, 1),         # top_k = 1: block-local
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "T%d_h%d_%d_d%d_B%d_k%d" % ((sum(c[0]),) + c[1:]))
def test_append_in_pieces_equals_prefill(rng, case):
    seqlens, hq, hkv, d, B, top_k = case
    cache, o_ref, arrays, cu = decode_case(rng, seqlens, hq, hkv, d, B, top_k)
    # the prefill it matches bitwise is itself right: the last token of each sequence against float64
    last = cu[1:] - 1
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, B, top_k)["o"]
    assert rel_err(o_ref[last], ref[last]) < TOL["float32"]
    # the cache holds exactly the appended keys, and the centroids of the full blocks
    for s, T in enumerate(seqlens):
        np.testing.assert_array_equal(cache.k_cache[s, :T], arrays["k"][cu[s]:cu[s + 1]])
        np.testing.assert_array_equal(cache.v_cache[s, :T], arrays["v"][cu[s]:cu[s + 1]])
        for i in range(T // B):
            mean = arrays["k"][cu[s] + i * B:cu[s] + (i + 1) * B].astype(np.float64).mean(axis=0)
            np.testing.assert_allclose(cache.centroids[s, i], mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("storage,spelling", [("float16", None), ("bfloat16", "uint16"), ("bfloat16", "ml_dtypes")])
def test_half_dtypes_equal_prefill(rng, storage, spelling):
    cache, o_ref, arrays, cu = decode_case(rng, [130, 45], 4, 2, 16, 16, 3, storage, spelling, threads=1)
    assert cache.k_cache.dtype == (np.float16 if storage == "float16" else np.uint16)
    last = cu[1:] - 1
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 16, 3, storage=storage)["o"]
    assert rel_err(from_storage(o_ref)[last], ref[last]) < TOL[storage]


def test_bf16_spellings_agree(rng):
    pytest.importorskip("ml_dtypes")
    arrays, cu = random_case(rng, [70], 2, 1, 16, "bfloat16")
    bits, typed = spelled(arrays, "bfloat16", "uint16"), spelled(arrays, "bfloat16", "ml_dtypes")
    caches = []
    for x in (bits, typed):
        c = moba.KVCache(1, 70, 2, 1, 16, 8, 2, dtype="bfloat16")
        c.append(x["k"], x["v"], [0, 70])
        caches.append(c)
    np.testing.assert_array_equal(caches[0].k_cache, caches[1].k_cache)
    np.testing.assert_array_equal(caches[0].centroids, caches[1].centroids)
    o_bits, o_typed = caches[0].attend(bits["q"][69:]), caches[1].attend(typed["q"][69:])
    assert o_bits.dtype == np.uint16 and o_typed.dtype.name == "bfloat16"
    np.testing.assert_array_equal(o_bits, o_typed.view(np.uint16))


def test_full_attention_equals_large_top_k(rng):
    seqlens = [200, 90]
    cache, o_full, arrays, cu = decode_case(rng, seqlens, 2, 1, 16, 16, 2, full_attention=True)
    q_last = arrays["q"][cu[1:] - 1]
    full = cache.attend(q_last, full_attention=True)
    cache.top_k = 1000  # more blocks than any sequence has: MoBA is full causal attention
    np.testing.assert_array_equal(cache.attend(q_last), full)
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 16, 1000)["o"]
    assert rel_err(full, ref[cu[1:] - 1]) < TOL["float32"]
    cache.top_k = 2  # and the routed answer really differs
    assert rel_err(cache.attend(q_last), full) > 1e-3


@pytest.mark.parametrize("page_size", [4, 16])
def test_paged_equals_contiguous(rng, page_size):
    seqlens = [150, 33, 96]
    paged, o_ref, arrays, cu = decode_case(rng, seqlens, 4, 2, 8, 16, 3, page_size=page_size)
    contiguous = moba.KVCache(3, 160, 4, 2, 8, 16, 3)
    contiguous.append(arrays["k"], arrays["v"], cu)
    q_last = arrays["q"][cu[1:] - 1]
    np.testing.assert_array_equal(paged.attend(q_last), contiguous.attend(q_last))
    np.testing.assert_array_equal(paged.centroids, contiguous.centroids[:, :paged.centroids.shape[1]])
    # pages were handed out in order and hold the right rows; pages not handed out are -1
    table = paged.block_table
    used = table[table >= 0]
    assert sorted(used) == list(range(len(used))) and len(used) == sum(-(-T // page_size) for T in seqlens)
    for s, T in enumerate(seqlens):
        rows = np.concatenate([paged.k_cache[p] for p in table[s, :-(-T // page_size)]])[:T]
        np.testing.assert_array_equal(rows, arrays["k"][cu[s]:cu[s + 1]])


def test_one_token_per_sequence_steps(rng):
    # the serving loop: prefill a prompt by one append, then decode one token per sequence per step
    arrays, cu = random_case(rng, [40, 40], 2, 2, 8)
    o_ref = moba.attention(arrays["q"], arrays["k"], arrays["v"], cu, 8, 2)
    cache = moba.KVCache(2, 40, 2, 2, 8, 8, 2, page_size=8, num_pages=10)
    prompt = np.r_[0:30, 40:70]
    cache.append(arrays["k"][prompt], arrays["v"][prompt], [0, 30, 60])
    for t in range(30, 40):
        rows = [t, 40 + t]
        cache.append(arrays["k"][rows], arrays["v"][rows])
        np.testing.assert_array_equal(cache.attend(arrays["q"][rows]), o_ref[rows])
    assert list(cache.seq_lens) == [40, 40]


def test_attend_output_fully_written(rng, monkeypatch):
    monkeypatch.setattr(_ops.NumpyArrays, "empty", lambda self, shape, like: np.full(shape, np.nan, like.dtype))
    monkeypatch.setattr(_ops.NumpyArrays, "empty_f32", lambda self, shape, like: np.full(shape, np.nan, np.float32))
    decode_case(rng, [60, 25], 2, 1, 8, 8, 2)


# ---- bad inputs: ValueError/TypeError with the message naming the problem; nothing changed ----

def filled(rng, page_size=0, num_pages=None):
    arrays, cu = random_case(rng, [20, 12], 2, 1, 8)
    cache = moba.KVCache(2, 24, 2, 1, 8, 8, 2, page_size=page_size, num_pages=num_pages)
    cache.append(arrays["k"], arrays["v"], cu)
    return cache, arrays


BAD_CACHES = [
    # KVCache arguments, exception, words in the message
    (dict(num_q_heads=3, num_kv_heads=2), ValueError, "num_q_heads (3) is not a multiple of num_kv_heads (2)"),
    (dict(page_size=3), ValueError, "page_size (3) must divide block_size (8)"),
    (dict(capacity=20, page_size=8), ValueError, "capacity (20) must be a multiple of page_size (8)"),
    (dict(head_dim=300), ValueError, "head_dim (300)"),
    (dict(top_k=0), ValueError, "top_k (0) must be >= 1"),
    (dict(block_size=0), ValueError, "block_size (0) must be >= 1"),
    (dict(num_seqs=0), ValueError, "num_seqs (0) must be >= 1"),
    (dict(softmax_scale=-1.0), ValueError, "softmax_scale"),
    (dict(dtype="float64"), TypeError, "float64"),
    (dict(capacity=2**40), ValueError, "capacity"),
    (dict(num_pages=4), ValueError, "num_pages (4) is for paged caches"),
]


@pytest.mark.parametrize("kwargs,exc,words", BAD_CACHES, ids=[str(b[0]) for b in BAD_CACHES])
def test_bad_cache(kwargs, exc, words):
    args = dict(num_seqs=2, capacity=24, num_q_heads=2, num_kv_heads=1, head_dim=8, block_size=8, top_k=2)
    args.update(kwargs)
    with pytest.raises(exc) as info:
        moba.KVCache(**args)
    assert words in str(info.value)


def test_bad_append_changes_nothing(rng):
    cache, arrays = filled(rng, page_size=4, num_pages=9)  # 5 + 3 pages of 9 used: 1 free
    k1, v1 = arrays["k"][:2], arrays["v"][:2]
    state = [cache.seq_lens.copy(), cache.k_cache.copy(), cache.centroids.copy(), cache.block_table.copy()]
    bad = [
        (lambda: cache.append(arrays["k"][:5], arrays["v"][:5], [0, 5, 5]), ValueError,
         "seq_lens[0] (20) + new tokens cu_new[1] - cu_new[0] (5) exceeds capacity (24)"),
        (lambda: cache.append(k1, v1, [0, 2]), ValueError, "cu_new has 2 entries, expected num_seqs + 1 = 3"),
        (lambda: cache.append(k1, v1, [0, 1, 3]), ValueError, "cu_new[-1] (3) must equal the number of rows given (2)"),
        (lambda: cache.append(k1, v1, [0, 3, 2]), ValueError, "cu_new is decreasing"),
        (lambda: cache.append(k1, v1, [1, 1, 2]), ValueError, "cu_new[0] (1) must be 0"),
        (lambda: cache.append(k1[:, :, :4], v1[:, :, :4]), ValueError, "k_new has shape (2, 1, 4), expected [tokens, 1, 8]"),
        (lambda: cache.append(k1, v1[:1]), ValueError, "v_new has shape (1, 1, 8), expected (2, 1, 8)"),
        (lambda: cache.append(k1.astype(np.float16), v1), TypeError, "float16"),
        (lambda: cache.append(k1.tolist(), v1), TypeError, "k_new must be a NumPy array"),
        (lambda: cache.append(k1[:1], v1[:1]), ValueError, "one token per sequence needs 2 rows, got 1"),
        (lambda: cache.append(arrays["k"][:8], arrays["v"][:8], [0, 4, 8]), ValueError, "page pool is full"),
    ]
    for call, exc, words in bad:
        with pytest.raises(exc) as info:
            call()
        assert words in str(info.value), (words, str(info.value))
        for x, before in zip((cache.seq_lens, cache.k_cache, cache.centroids, cache.block_table), state):
            np.testing.assert_array_equal(x, before)
    cache.append(arrays["k"][:4], arrays["v"][:4], [0, 4, 4])  # still usable: fills the last free page
    assert list(cache.seq_lens) == [24, 12]


def test_bad_attend(rng):
    cache, arrays = filled(rng)
    q = arrays["q"]
    bad = [
        (lambda: cache.attend(q[:14], [0, 1, 14]), ValueError,
         "cu_q[2] - cu_q[1] (13 queries) exceeds seq_lens[1] (12)"),
        (lambda: cache.attend(q[:2, :1]), ValueError, "q has shape (2, 1, 8), expected [tokens, 2, 8]"),
        (lambda: cache.attend(q[:3]), ValueError, "one token per sequence needs 2 rows, got 3"),
        (lambda: cache.attend(q[:2].astype(np.float64)), TypeError, "float64"),
        (lambda: cache.attend(q[:2], [0.0, 1.0, 2.0]), TypeError, "cu_seqlens must hold integers"),
    ]
    for call, exc, words in bad:
        with pytest.raises(exc) as info:
            call()
        assert words in str(info.value), (words, str(info.value))
    cache.top_k = 0
    with pytest.raises(ValueError, match=r"moba_cache_attend: top_k \(0\) must be >= 1"):
        cache.attend(q[:2])
    cache.attend(q[:2], full_attention=True)  # full attention does not read top_k


# ---- torch ----

def test_torch_cpu_equals_numpy(rng):
    torch = pytest.importorskip("torch")
    arrays, cu = random_case(rng, [100, 37], 4, 2, 16, "bfloat16")
    x = spelled(arrays, "bfloat16", "uint16")
    np_cache = moba.KVCache(2, 104, 4, 2, 16, 8, 3, dtype="bfloat16", page_size=4)
    np_cache.append(x["k"], x["v"], cu)
    t = {n: torch.from_numpy(a).to(torch.bfloat16) for n, a in arrays.items()}
    t_cache = moba.KVCache(2, 104, 4, 2, 16, 8, 3, dtype=torch.bfloat16, page_size=4, device="cpu")
    t_cache.append(t["k"][:50], t["v"][:50], torch.tensor([0, 50, 50]))
    t_cache.append(t["k"][50:], t["v"][50:], [0, 50, 87])
    assert t_cache.k_cache.dtype == torch.bfloat16 and t_cache.block_table.dtype == torch.int32
    last = cu[1:] - 1
    o_np, lse_np = np_cache.attend(x["q"][last], return_lse=True)
    o_t, lse_t = t_cache.attend(t["q"][last], return_lse=True)
    assert o_t.dtype == torch.bfloat16 and lse_t.dtype == torch.float32
    np.testing.assert_array_equal(o_t.view(torch.int16).numpy().view(np.uint16), o_np)
    np.testing.assert_array_equal(lse_t.numpy(), lse_np)
    with pytest.raises(TypeError, match="k_new must be a torch tensor"):
        t_cache.append(x["k"][:2], x["v"][:2])


def test_torch_cuda_decode_or_unsupported(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not moba.backend_available("cuda"):
        pytest.skip("needs a GPU and libmoba's CUDA backend")
    try:
        cache = moba.KVCache(1, 64, 2, 1, 64, 16, 2, dtype="bfloat16", device="cuda")
    except NotImplementedError as e:  # until the CUDA backend decodes
        assert "decode" in str(e)
        return
    arrays, cu = random_case(rng, [64], 2, 1, 64, "bfloat16")
    t = {n: torch.from_numpy(a).to("cuda", torch.bfloat16) for n, a in arrays.items()}
    cache.append(t["k"], t["v"], [0, 64])
    o = cache.attend(t["q"][63:])
    ref = moba.attention(t["q"], t["k"], t["v"], torch.tensor([0, 64], dtype=torch.int32), 16, 2)
    assert rel_err(o.float().cpu().numpy(), ref[63:].float().cpu().numpy()) < TOL["bfloat16"]
