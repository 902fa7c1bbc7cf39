"""Shared by the torch tests: run moba's autograd on a device and compare with the float64 reference."""
import numpy as np
import pytest
import torch

import moba
from golden import record
from mobaref import moba as reference, random_case, rel_err

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TOL = {"float32": (1e-5, 1e-5), "float16": (2e-3, 4e-3), "bfloat16": (1.5e-2, 2.5e-2)}


def leaf(x32, storage, device):
    return torch.from_numpy(x32).to(device=device, dtype=TORCH_DTYPES[storage]).requires_grad_(True)


def check_autograd(rng, seqlens, hq, hkv, d, block_size, top_k, storage, device, label, cu_on_device=False):
    """o = moba.attention(...) with autograd, o.backward(do); o, lse, q.grad, k.grad, v.grad against the
    float64 reference on the same (rounded) inputs. Returns the relative errors."""
    arrays, cu = random_case(rng, seqlens, hq, hkv, d, storage)
    q, k, v = (leaf(arrays[n], storage, device) for n in ("q", "k", "v"))
    do = torch.from_numpy(arrays["do"]).to(device=device, dtype=TORCH_DTYPES[storage])
    cu_t = torch.from_numpy(cu).to(device if cu_on_device else "cpu")
    o, lse = moba.attention(q, k, v, cu_t, block_size, top_k, return_lse=True)
    assert o.dtype == q.dtype and o.device == q.device and o.shape == q.shape and o.requires_grad
    assert lse.dtype == torch.float32 and lse.shape == (hq, q.shape[0]) and not lse.requires_grad
    ref = reference(arrays["q"], arrays["k"], arrays["v"], cu, block_size, top_k, storage=storage, do=arrays["do"])
    fwd, bwd = TOL[storage]
    errs = {"o": rel_err(o.detach().double().cpu().numpy(), ref["o"])}
    lse_err = float(np.max(np.abs(lse.double().cpu().numpy() - ref["lse"])))
    try:
        o.backward(do)
    except NotImplementedError as e:  # a backend without backward: the forward is still checked
        record("torch %s %s %s (forward only)" % (device, storage, label), **errs)
        assert errs["o"] < fwd, errs
        assert lse_err < 2e-2, lse_err
        pytest.skip("forward checked (o %.2e); %s" % (errs["o"], e))
    got = {"dq": q.grad, "dk": k.grad, "dv": v.grad}
    errs.update({n: rel_err(t.detach().double().cpu().numpy(), ref[n]) for n, t in got.items()})
    record("torch %s %s %s" % (device, storage, label), **errs)
    assert errs["o"] < fwd, errs
    assert max(errs["dq"], errs["dk"], errs["dv"]) < bwd, errs
    assert lse_err < (1e-4 if storage == "float32" else 2e-2), lse_err
    return errs
