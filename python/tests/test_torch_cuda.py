"""moba through PyTorch on CUDA (run on a GPU machine: python3 -m pytest python/tests -k cuda).
Skipped without torch, without a GPU, or when libmoba has no CUDA backend. Set MOBA_TEST_REPORT=path to keep the
measured errors."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import moba  # noqa: E402
from mobaref import moba as reference, random_case, rel_err  # noqa: E402
from torch_support import TORCH_DTYPES, check_autograd, leaf  # noqa: E402

HAVE_GPU = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAVE_GPU or not moba.backend_available("cuda"),
                                reason="needs a GPU and libmoba's CUDA backend")

CASES = [
    # seqlens, hq, hkv, d, block, top_k
    ([37, 200, 1, 129], 6, 2, 64, 16, 3),
    ([1000, 423], 4, 1, 128, 128, 3),
    ([2048], 2, 2, 128, 64, 1000),             # top_k beyond the block count: full causal
    ([513, 300], 2, 2, 64, 64, 1),
]


@needs_cuda
@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "T%d_h%d_%d_d%d_B%d_k%d" % ((sum(c[0]),) + c[1:]))
def test_cuda_autograd(rng, storage, case):
    seqlens, hq, hkv, d, B, top_k = case
    try:
        check_autograd(rng, seqlens, hq, hkv, d, B, top_k, storage, "cuda", str(case))
    except NotImplementedError as e:  # a dtype / head_dim / block_size the CUDA backend says it does not do
        pytest.skip(str(e))


@needs_cuda
def test_cuda_cu_seqlens_on_device(rng):
    check_autograd(rng, [300, 77], 2, 1, 64, 32, 3, "bfloat16", "cuda", "cu_seqlens on device", cu_on_device=True)


@needs_cuda
def test_cuda_side_stream(rng):
    # Work is queued on the caller's current stream: run on a side stream, sync only that stream.
    arrays, cu = random_case(rng, [700, 300], 4, 2, 64, "bfloat16")
    q, k, v = (leaf(arrays[n], "bfloat16", "cuda") for n in ("q", "k", "v"))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 64, 3, storage="bfloat16", do=arrays["do"])
    with torch.cuda.stream(s):
        o = moba.attention(q, k, v, cu, 64, 3)
    s.synchronize()
    assert rel_err(o.detach().double().cpu().numpy(), ref["o"]) < 1.5e-2
    with torch.cuda.stream(s):
        try:
            o.backward(torch.from_numpy(arrays["do"]).to("cuda", torch.bfloat16))
        except NotImplementedError as e:
            pytest.skip("forward checked; " + str(e))
    s.synchronize()
    assert rel_err(q.grad.double().cpu().numpy(), ref["dq"]) < 2.5e-2


@needs_cuda
@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_cuda_matches_cpu_route(rng, storage):
    arrays, cu = random_case(rng, [500, 129], 4, 2, 64, storage)
    q, k = (torch.from_numpy(arrays[n]).to(dtype=TORCH_DTYPES[storage]) for n in ("q", "k"))
    idx_gpu = moba.route(q.cuda(), k.cuda(), cu, 32, 4)
    assert idx_gpu.is_cuda and idx_gpu.dtype == torch.int32
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, 32, 4, storage=storage)["route"]
    np.testing.assert_array_equal(idx_gpu.cpu().numpy(), ref)


@needs_cuda
def test_cuda_deterministic_backward(rng):
    arrays, cu = random_case(rng, [600], 4, 1, 64, "bfloat16")
    q, k, v, do = (torch.from_numpy(arrays[n]).to("cuda", torch.bfloat16) for n in ("q", "k", "v", "do"))
    o, lse = moba.attention(q, k, v, cu, 64, 3, return_lse=True)
    try:
        first = moba.attention_backward(do, q, k, v, o, lse, cu, 64, 3, deterministic=True)
    except NotImplementedError as e:
        pytest.skip(str(e))
    second = moba.attention_backward(do, q, k, v, o, lse, cu, 64, 3, deterministic=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.skipif(not HAVE_GPU or moba.backend_available("cuda"), reason="only where the GPU is there but "
                    "libmoba's CUDA backend is not")
def test_cuda_unavailable_error_is_clear(rng):
    arrays, cu = random_case(rng, [32], 1, 1, 8)
    q = torch.from_numpy(arrays["q"]).cuda()
    with pytest.raises(RuntimeError, match="CUDA backend"):
        moba.attention(q, q, q, cu, 8, 2)
