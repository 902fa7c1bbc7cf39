"""moba through PyTorch on the CPU: autograd against the float64 reference, the reference's drop-in signature,
and errors. Skipped when torch is not importable."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import moba  # noqa: E402
from mobaref import moba as reference, random_case, rel_err  # noqa: E402
from torch_support import check_autograd, leaf  # noqa: E402


@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16"])
def test_cpu_autograd(rng, storage):
    check_autograd(rng, [37, 200, 1, 129], 6, 2, 32, 16, 3, storage, "cpu", "gqa varlen")


def test_cpu_autograd_full_and_local(rng):
    check_autograd(rng, [150, 90], 2, 1, 16, 20, 1000, "float32", "cpu", "top_k beyond blocks")
    check_autograd(rng, [128], 2, 2, 16, 32, 1, "float32", "cpu", "top_k 1")


def test_moba_attn_varlen_dropin(rng):
    arrays, cu = random_case(rng, [100, 60], 4, 4, 16)
    q, k, v = (torch.from_numpy(arrays[n]) for n in ("q", "k", "v"))
    cu_t = torch.from_numpy(cu)
    o = moba.moba_attn_varlen(q, k, v, cu_t, max_seqlen=100, moba_chunk_size=16, moba_topk=3)
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 16, 3)
    assert rel_err(o.numpy(), ref["o"]) < 1e-5
    # GQA too (the reference itself needs equal heads)
    o2 = moba.moba_attn_varlen(q, k[:, :2].contiguous(), v[:, :2].contiguous(), cu_t, 100, 16, 3)
    ref2 = reference(arrays["q"], arrays["k"][:, :2], arrays["v"][:, :2], cu, 16, 3)
    assert rel_err(o2.numpy(), ref2["o"]) < 1e-5


def test_no_grad_matches_autograd(rng):
    arrays, cu = random_case(rng, [70, 30], 2, 1, 16)
    q, k, v = (leaf(arrays[n], "float32", "cpu") for n in ("q", "k", "v"))
    o = moba.attention(q, k, v, cu, 16, 2)
    with torch.no_grad():
        o2 = moba.attention(q, k, v, cu, 16, 2)
    assert not o2.requires_grad
    assert torch.equal(o.detach(), o2)


def test_noncontiguous_and_grad_of_views(rng):
    # q taken from a fused qkv projection (a strided view), a loss on a slice of o: gradients still exact.
    arrays, cu = random_case(rng, [64, 40], 2, 2, 16)
    qkv = torch.from_numpy(np.stack([arrays["q"], arrays["k"], arrays["v"]], axis=1)).requires_grad_(True)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    assert not q.is_contiguous()
    o = moba.attention(q, k, v, torch.from_numpy(cu), 16, 2)
    (o[:, :, :8] * torch.from_numpy(arrays["do"])[:, :, :8]).sum().backward()
    do = arrays["do"].copy()
    do[:, :, 8:] = 0
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 16, 2, do=do)
    g = qkv.grad.numpy()
    for i, n in enumerate(("dq", "dk", "dv")):
        assert rel_err(g[:, i], ref[n]) < 1e-5, n


def test_backward_function_with_tensors(rng):
    arrays, cu = random_case(rng, [50], 2, 1, 8)
    q, k, v, do = (torch.from_numpy(arrays[n]) for n in ("q", "k", "v", "do"))
    o, lse = moba.attention(q, k, v, cu, 8, 2, return_lse=True)
    dq, dk, dv = moba.attention_backward(do, q, k, v, o, lse, cu, 8, 2)
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 8, 2, do=arrays["do"])
    for n, t in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert isinstance(t, torch.Tensor) and rel_err(t.numpy(), ref[n]) < 1e-5
    idx = moba.route(q, k, cu, 8, 2)
    assert idx.dtype == torch.int32
    np.testing.assert_array_equal(idx.numpy(), ref["route"])


def test_torch_bad_inputs(rng):
    arrays, cu = random_case(rng, [32], 2, 1, 8)
    q, k, v = (torch.from_numpy(arrays[n]) for n in ("q", "k", "v"))
    with pytest.raises(TypeError, match="k"):
        moba.attention(q, arrays["k"], v, cu, 8, 2)
    with pytest.raises(TypeError, match="float64"):
        moba.attention(q.double(), k.double(), v.double(), cu, 8, 2)
    with pytest.raises(TypeError, match="k"):
        moba.attention(q, k.half(), v, cu, 8, 2)
    with pytest.raises(TypeError, match="cu_seqlens"):
        moba.attention(q, k, v, torch.tensor([0.0, 32.0]), 8, 2)
    with pytest.raises(ValueError, match="num_q_heads"):
        moba.attention(torch.ones(32, 3, 8), k.expand(32, 2, 8), v.expand(32, 2, 8), cu, 8, 2)
    with pytest.raises(ValueError, match="cu_seqlens"):
        moba.attention(q, k, v, torch.tensor([0, 33], dtype=torch.int32), 8, 2)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            moba.attention(q, k.cuda(), v, cu, 8, 2)
