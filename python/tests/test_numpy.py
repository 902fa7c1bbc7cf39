"""moba through NumPy (CPU backend): golden cases, a float64 reference on fresh random inputs, bad inputs."""
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest

import moba
from moba import _lib, _ops
from golden import REPO, golden_cases, golden_dir, load_golden, record
from mobaref import from_storage, moba as reference, random_case, rel_err, to_storage

# Relative Frobenius error allowed: (forward o, backward dq/dk/dv), per storage dtype.
TOL = {"float32": (1e-5, 1e-5), "float16": (2e-3, 4e-3), "bfloat16": (1.5e-2, 2.5e-2)}
GRADS = ("dq", "dk", "dv")


def spell(storage, spelling):
    """(array converter, dtype argument) for a storage dtype and a bf16 spelling ("uint16" or "ml_dtypes")."""
    if storage == "bfloat16" and spelling == "ml_dtypes":
        pytest.importorskip("ml_dtypes")
    return (lambda x32: to_storage(x32, storage, spelling)), ("bfloat16" if spelling == "uint16" and
                                                              storage == "bfloat16" else None)


def run(arrays, cu, block_size, top_k, storage, spelling="uint16", softmax_scale=None):
    """Forward + backward through moba on the given float32 arrays; outputs and grads as float64."""
    conv, dtype = spell(storage, spelling)
    q, k, v, do = (conv(arrays[n]) for n in ("q", "k", "v", "do"))
    o, lse = moba.attention(q, k, v, cu, block_size, top_k, softmax_scale=softmax_scale, return_lse=True,
                            dtype=dtype)
    assert o.dtype == q.dtype and o.shape == q.shape
    assert lse.dtype == np.float32 and lse.shape == (q.shape[1], q.shape[0])
    dq, dk, dv = moba.attention_backward(do, q, k, v, o, lse, cu, block_size, top_k, softmax_scale=softmax_scale,
                                         dtype=dtype)
    assert dq.dtype == q.dtype and dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    return {"o": from_storage(o), "lse": lse.astype(np.float64), "dq": from_storage(dq),
            "dk": from_storage(dk), "dv": from_storage(dv)}


def assert_close(name, got, ref, storage):
    fwd, bwd = TOL[storage]
    errs = {n: rel_err(got[n], ref[n]) for n in ("o",) + GRADS}
    record(name, **errs)
    assert errs["o"] < fwd, "%s: o rel err %.3e >= %.1e" % (name, errs["o"], fwd)
    for n in GRADS:
        assert errs[n] < bwd, "%s: %s rel err %.3e >= %.1e (all: %s)" % (name, n, errs[n], bwd, errs)
    if "lse" in got and "lse" in ref:
        assert np.max(np.abs(got["lse"] - ref["lse"])) < (1e-4 if storage == "float32" else 2e-2)


# ---- golden cases (made by the reference implementation) ----

def test_golden_dir_present():
    assert golden_cases(), "no golden cases under %s (set MOBA_GOLDEN_DIR)" % golden_dir()


def golden_inputs(name):
    meta, g = load_golden(name)
    arrays = {n: from_storage(g[n]).astype(np.float32) for n in ("q", "k", "v", "do")}
    expected = {n: from_storage(g[n]) for n in ("o",) + GRADS}
    return meta, arrays, g["cu_seqlens"], expected


@pytest.mark.parametrize("name", golden_cases())
def test_golden(name):
    meta, arrays, cu, expected = golden_inputs(name)
    got = run(arrays, cu, meta["block"], meta["topk"], meta["dtype"])
    assert_close("numpy golden " + name, got, expected, meta["dtype"])


@pytest.mark.parametrize("name", [c for c in golden_cases() if load_golden(c)[0]["dtype"] == "bfloat16"])
def test_golden_bf16_ml_dtypes(name):
    meta, arrays, cu, expected = golden_inputs(name)
    got = run(arrays, cu, meta["block"], meta["topk"], "bfloat16", spelling="ml_dtypes")
    assert_close("numpy golden ml_dtypes " + name, got, expected, "bfloat16")


@pytest.mark.parametrize("name", golden_cases())
def test_reference_agrees_with_golden(name):
    # The tests' own float64 reference must agree with the published one before it can judge libmoba.
    meta, arrays, cu, expected = golden_inputs(name)
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, meta["block"], meta["topk"],
                    storage=meta["dtype"], do=arrays["do"])
    assert_close("reference golden " + name, ref, expected, meta["dtype"])


# ---- fresh random inputs against the float64 reference ----

CASES = [
    # seqlens, hq, hkv, d, block, top_k
    ([37, 200, 1, 129], 6, 2, 32, 16, 3),      # GQA, varlen, a 1-token sequence, partial last blocks
    ([300, 77], 4, 1, 64, 32, 4),              # MQA
    ([256], 2, 2, 16, 64, 1),                  # top_k = 1: block-local causal
    ([150, 90], 2, 1, 8, 20, 1000),            # top_k beyond every block count: full causal
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "T%d_h%d_%d_d%d_B%d_k%d" % ((sum(c[0]),) + c[1:]))
def test_random_float32(rng, case):
    seqlens, hq, hkv, d, B, top_k = case
    arrays, cu = random_case(rng, seqlens, hq, hkv, d)
    got = run(arrays, cu, B, top_k, "float32")
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, B, top_k, do=arrays["do"])
    assert_close("numpy random f32 %s" % (case,), got, ref, "float32")


@pytest.mark.parametrize("storage,spelling", [("float16", None), ("bfloat16", "uint16"),
                                              ("bfloat16", "ml_dtypes")])
def test_random_half(rng, storage, spelling):
    arrays, cu = random_case(rng, [300, 77, 129], 4, 2, 64, storage)
    got = run(arrays, cu, 32, 3, storage, spelling)
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 32, 3, storage=storage, do=arrays["do"])
    assert_close("numpy random %s %s" % (storage, spelling), got, ref, storage)


def test_softmax_scale(rng):
    arrays, cu = random_case(rng, [100, 60], 2, 1, 16)
    got = run(arrays, cu, 16, 2, "float32", softmax_scale=0.3)
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 16, 2, softmax_scale=0.3, do=arrays["do"])
    assert_close("numpy softmax_scale", got, ref, "float32")
    default = moba.attention(arrays["q"], arrays["k"], arrays["v"], cu, 16, 2)
    assert rel_err(default, got["o"]) > 1e-3  # the scale was really used


def test_route(rng):
    arrays, cu = random_case(rng, [200, 33, 64], 4, 2, 16)
    for top_k in (1, 3, 50):
        idx = moba.route(arrays["q"], arrays["k"], cu, 16, top_k)
        assert idx.dtype == np.int32 and idx.shape == (4, 297, top_k)
        ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 16, top_k)["route"]
        np.testing.assert_array_equal(idx, ref)


def test_block_idx_kept_for_backward(rng):
    # the forward hands out the selection it used (moba.route's), and a backward given it returns the bits of
    # one that routes again; a selection that is not one is refused by name
    arrays, cu = random_case(rng, [200, 33, 64], 4, 2, 16)
    q, k, v, do = (arrays[n] for n in ("q", "k", "v", "do"))
    for top_k in (1, 3, 50):
        o, lse, idx = moba.attention(q, k, v, cu, 16, top_k, return_lse=True, return_block_idx=True)
        np.testing.assert_array_equal(idx, moba.route(q, k, cu, 16, top_k))
        o2, idx2 = moba.attention(q, k, v, cu, 16, top_k, return_block_idx=True)
        np.testing.assert_array_equal(o2, o)
        np.testing.assert_array_equal(idx2, idx)
        again = moba.attention_backward(do, q, k, v, o, lse, cu, 16, top_k)
        kept = moba.attention_backward(do, q, k, v, o, lse, cu, 16, top_k, block_idx=idx)
        for a, b in zip(again, kept):
            np.testing.assert_array_equal(a, b)
    o, lse, idx = moba.attention(q, k, v, cu, 16, 3, return_lse=True, return_block_idx=True)
    bad = idx.copy()
    bad[0, 100, 0] = 7  # token 100 is in block 6: block 7 is not history
    with pytest.raises(ValueError, match="block_idx"):
        moba.attention_backward(do, q, k, v, o, lse, cu, 16, 3, block_idx=bad)
    with pytest.raises(ValueError, match="block_idx"):
        moba.attention_backward(do, q, k, v, o, lse, cu, 16, 3, block_idx=idx[:, :, :2].copy())
    with pytest.raises(TypeError, match="block_idx"):
        moba.attention_backward(do, q, k, v, o, lse, cu, 16, 3, block_idx=idx.astype(np.int64))


def test_cu_seqlens_spellings(rng):
    arrays, cu = random_case(rng, [40, 25], 2, 2, 8)
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    base = moba.attention(q, k, v, cu, 8, 2)
    for spelled in (list(cu), tuple(int(c) for c in cu), cu.astype(np.int64), cu.astype(np.uint32)):
        np.testing.assert_array_equal(moba.attention(q, k, v, spelled, 8, 2), base)


def test_noncontiguous_inputs(rng):
    arrays, cu = random_case(rng, [70], 4, 2, 16)
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    qt = np.ascontiguousarray(q.transpose(1, 0, 2)).transpose(1, 0, 2)  # same values, strided
    assert not qt.flags.c_contiguous
    np.testing.assert_array_equal(moba.attention(qt, k, v, [0, 70], 16, 2), moba.attention(q, k, v, [0, 70], 16, 2))


def test_outputs_fully_written(rng, monkeypatch):
    # Poison every output buffer the binding allocates: a result that matches the reference was written whole.
    def poisoned(self, shape, like):
        return np.full(shape, np.nan, dtype=like.dtype) if like.dtype.kind == "f" else np.full(shape, 0x7FC1,
                                                                                                 like.dtype)
    monkeypatch.setattr(_ops.NumpyArrays, "empty", poisoned)
    monkeypatch.setattr(_ops.NumpyArrays, "empty_f32", lambda self, shape, like: np.full(shape, np.nan, np.float32))
    monkeypatch.setattr(_ops.NumpyArrays, "empty_i32", lambda self, shape, like: np.full(shape, -7, np.int32))
    arrays, cu = random_case(rng, [45, 1, 80], 4, 2, 16)
    got = run(arrays, cu, 16, 2, "float32")
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 16, 2, do=arrays["do"])
    assert_close("numpy poisoned outputs", got, ref, "float32")
    np.testing.assert_array_equal(moba.route(arrays["q"], arrays["k"], cu, 16, 2), ref["route"])


# ---- bad inputs: a clear exception naming the problem, and nothing the caller owns modified ----

def small(rng, T=32, hq=2, hkv=1, d=8):
    arrays, cu = random_case(rng, [T], hq, hkv, d)
    return arrays["q"], arrays["k"], arrays["v"], cu


BAD = [
    # (what is wrong, callable(q, k, v, cu) -> calls moba, exception, words the message must contain)
    ("heads not a multiple", lambda q, k, v, cu: moba.attention(np.zeros((32, 6, 8), np.float32) + 1,
                                                                np.ones((32, 4, 8), np.float32),
                                                                np.ones((32, 4, 8), np.float32), cu, 8, 2),
     ValueError, "num_q_heads"),
    ("cu_seqlens end != total", lambda q, k, v, cu: moba.attention(q, k, v, [0, 31], 8, 2), ValueError, "cu_seqlens"),
    ("cu_seqlens decreasing", lambda q, k, v, cu: moba.attention(q, k, v, [0, 20, 10, 32], 8, 2), ValueError,
     "cu_seqlens"),
    ("cu_seqlens start != 0", lambda q, k, v, cu: moba.attention(q, k, v, [2, 32], 8, 2), ValueError, "cu_seqlens"),
    ("cu_seqlens empty", lambda q, k, v, cu: moba.attention(q, k, v, [0], 8, 2), ValueError, "num_seqs"),
    ("cu_seqlens 2-D", lambda q, k, v, cu: moba.attention(q, k, v, [[0, 32]], 8, 2), ValueError, "cu_seqlens"),
    ("cu_seqlens float", lambda q, k, v, cu: moba.attention(q, k, v, [0.0, 32.0], 8, 2), TypeError, "cu_seqlens"),
    ("block_size 0", lambda q, k, v, cu: moba.attention(q, k, v, cu, 0, 2), ValueError, "block_size"),
    ("top_k 0", lambda q, k, v, cu: moba.attention(q, k, v, cu, 8, 0), ValueError, "top_k"),
    ("top_k negative in route", lambda q, k, v, cu: moba.route(q, k, cu, 8, -3), ValueError, "top_k"),
    ("block_size float", lambda q, k, v, cu: moba.attention(q, k, v, cu, 8.5, 2), TypeError, "block_size"),
    ("block_size huge", lambda q, k, v, cu: moba.attention(q, k, v, cu, 2**40, 2), ValueError, "block_size"),
    ("softmax_scale negative", lambda q, k, v, cu: moba.attention(q, k, v, cu, 8, 2, softmax_scale=-1.0),
     ValueError, "softmax_scale"),
    ("float64", lambda q, k, v, cu: moba.attention(q.astype(np.float64), k.astype(np.float64),
                                                   v.astype(np.float64), cu, 8, 2), TypeError, "float64"),
    ("uint16 without dtype", lambda q, k, v, cu: moba.attention(q.view(np.uint16)[:, :, :8], k.view(np.uint16)[:, :, :8],
                                                                v.view(np.uint16)[:, :, :8], cu, 8, 2),
     TypeError, "bfloat16"),
    ("uint16 with dtype float16", lambda q, k, v, cu: moba.attention(q.view(np.uint16), k.view(np.uint16),
                                                                     v.view(np.uint16), cu, 8, 2, dtype="float16"),
     TypeError, "bfloat16"),
    ("dtype mismatch", lambda q, k, v, cu: moba.attention(q, k.astype(np.float16), v, cu, 8, 2), TypeError, "k"),
    ("dtype argument disagrees", lambda q, k, v, cu: moba.attention(q, k, v, cu, 8, 2, dtype="float16"), TypeError,
     "float16"),
    ("unknown dtype argument", lambda q, k, v, cu: moba.attention(q, k, v, cu, 8, 2, dtype="float64"), TypeError,
     "float64"),
    ("q 2-D", lambda q, k, v, cu: moba.attention(q[:, 0], k, v, cu, 8, 2), ValueError, "q"),
    ("k tokens differ", lambda q, k, v, cu: moba.attention(q, k[:31], v[:31], cu, 8, 2), ValueError, "k"),
    ("v shape differs", lambda q, k, v, cu: moba.attention(q, k, v[:, :, :4], cu, 8, 2), ValueError, "v"),
    ("k head_dim differs", lambda q, k, v, cu: moba.attention(q, k[:, :, :4], v[:, :, :4], cu, 8, 2), ValueError,
     "k"),
    ("q a list", lambda q, k, v, cu: moba.attention(q.tolist(), k, v, cu, 8, 2), TypeError, "q"),
    ("head_dim too large", lambda q, k, v, cu: moba.attention(np.ones((4, 1, 300), np.float32),
                                                              np.ones((4, 1, 300), np.float32),
                                                              np.ones((4, 1, 300), np.float32), [0, 4], 2, 2),
     (ValueError, NotImplementedError), "head_dim"),
]


@pytest.mark.parametrize("what,call,exc,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input(rng, what, call, exc, words):
    q, k, v, cu = small(rng)
    before = [x.copy() for x in (q, k, v, cu)]
    with pytest.raises(exc) as info:
        call(q, k, v, cu)
    assert words in str(info.value), "%s: message %r does not name %r" % (what, str(info.value), words)
    for x, b in zip((q, k, v, cu), before):
        np.testing.assert_array_equal(x, b)


def test_bad_backward_inputs(rng):
    q, k, v, cu = small(rng)
    o, lse = moba.attention(q, k, v, cu, 8, 2, return_lse=True)
    do = np.ones_like(q)
    with pytest.raises(TypeError, match="lse"):
        moba.attention_backward(do, q, k, v, o, lse.astype(np.float64), cu, 8, 2)
    with pytest.raises(ValueError, match="lse"):
        moba.attention_backward(do, q, k, v, o, lse.T.copy(), cu, 8, 2)
    with pytest.raises(ValueError, match="do"):
        moba.attention_backward(do[:, :1], q, k, v, o, lse, cu, 8, 2)
    with pytest.raises(TypeError, match="o"):
        moba.attention_backward(do, q, k, v, o.astype(np.float16), lse, cu, 8, 2)


def test_inputs_untouched_by_success(rng):
    arrays, cu = random_case(rng, [50, 20], 4, 2, 16)
    before = {n: a.copy() for n, a in arrays.items()}
    run(arrays, cu, 16, 2, "float32")
    for n in arrays:
        np.testing.assert_array_equal(arrays[n], before[n])


# ---- the binding itself ----

def test_version_and_backends():
    assert moba.version().startswith("%d.%d." % _lib.ABI_VERSION)
    assert moba.backend_available("cpu") is True
    assert moba.backend_available("cuda") in (True, False)
    with pytest.raises(ValueError):
        moba.backend_available("tpu")
    assert os.path.exists(moba.library_path())


@pytest.mark.parametrize("struct,c_name", [(_lib.Params, "moba_params"), (_lib.CacheParams, "moba_cache_params")])
def test_params_layout_matches_header(tmp_path, struct, c_name):
    # ctypes' moba_params (and moba_cache_params) must have the C compiler's offsets, or every call reads garbage.
    header = os.path.join(REPO, "include", "moba.h")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not os.path.exists(header):
        pytest.skip("needs a C compiler and include/moba.h")
    fields = [f for f, _ in struct._fields_]
    src = tmp_path / "layout.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include \"moba.h\"\nint main(void) {\n" +
                   "".join('printf("%%zu\\n", offsetof(%s, %s));\n' % (c_name, f) for f in fields) +
                   'printf("%%zu\\n", sizeof(%s));\nreturn 0;\n}\n' % c_name)
    exe = tmp_path / "layout"
    subprocess.run([cc, "-I", os.path.dirname(header), str(src), "-o", str(exe)], check=True)
    printed = [int(x) for x in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    expected = [getattr(struct, f).offset for f in fields] + [ctypes.sizeof(struct)]
    assert printed == expected


def test_library_search_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBA_LIBRARY", str(tmp_path / "nowhere.so"))
    paths = _lib.candidate_paths()
    assert paths[0] == str(tmp_path / "nowhere.so")
    assert paths[-1].endswith(os.path.join("build", "libmoba.so"))
