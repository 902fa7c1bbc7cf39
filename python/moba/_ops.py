"""The array-facing calls: NumPy arrays and torch tensors in, library calls out, outputs allocated like the inputs.

One Call object per library call: it checks the arrays' kind, device, dtype and shapes (what the library cannot
see through pointers), makes them contiguous, fills moba_params, and allocates outputs. The library checks the
rest (cu_seqlens, head counts, sizes) and its message is what the caller reads.
"""
import ctypes
import operator

import numpy as np

from . import _lib

INT32_MAX = 2**31 - 1
STORAGE_DTYPES = tuple(_lib.DTYPE_CODES)  # ("float32", "float16", "bfloat16")


def is_torch_tensor(x):
    # No `import torch` here: the NumPy path must work where torch is not installed.
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def dtype_name(dtype):
    """A requested storage dtype as one of STORAGE_DTYPES, or None. Accepts "bfloat16", np.float16,
    torch.float16, ml_dtypes.bfloat16, ..."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype
    elif type(dtype).__module__.startswith("torch"):  # torch.float16 and friends
        name = str(dtype).replace("torch.", "")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            raise TypeError("moba: dtype %r is not a dtype (use one of %s)" % (dtype, ", ".join(STORAGE_DTYPES)))
    if name not in STORAGE_DTYPES:
        raise TypeError("moba: dtype %r is not supported (use one of %s)" % (dtype, ", ".join(STORAGE_DTYPES)))
    return name


def c_int(name, value):
    """A Python integer that must fit a C int (block_size, top_k, dimensions)."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError("moba: %s must be an integer, got %r" % (name, value))
    if not -INT32_MAX - 1 <= value <= INT32_MAX:
        raise ValueError("moba: %s (%d) does not fit in a C int" % (name, value))
    return value


def host_cu_seqlens(cu_seqlens):
    """cu_seqlens as a contiguous host int32 NumPy array. A CUDA tensor is copied to the host, which waits
    for the current stream: pass a CPU tensor or a NumPy array to avoid that sync."""
    if is_torch_tensor(cu_seqlens):
        if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == _torch().bool:
            raise TypeError("moba: cu_seqlens must hold integers, got %s" % cu_seqlens.dtype)
        cu_seqlens = cu_seqlens.detach().to("cpu").numpy()
    cu = np.asarray(cu_seqlens)
    if cu.dtype.kind not in "iu":
        raise TypeError("moba: cu_seqlens must hold integers, got dtype %s" % cu.dtype)
    if cu.ndim != 1:
        raise ValueError("moba: cu_seqlens must be 1-D [num_seqs + 1], got shape %s" % (cu.shape,))
    if cu.size and (int(cu.min()) < -INT32_MAX - 1 or int(cu.max()) > INT32_MAX):
        raise ValueError("moba: cu_seqlens has values that do not fit in int32")
    return np.ascontiguousarray(cu, dtype=np.int32)


def _torch():
    import torch
    return torch


class NumpyArrays:
    """The NumPy face: CPU backend; bf16 as ml_dtypes.bfloat16 arrays or as uint16 raw bits."""
    kind = "NumPy array"

    def check_kind(self, name, x):
        if not isinstance(x, np.ndarray):
            raise TypeError("moba: %s must be a NumPy array like q, got %s" % (name, type(x).__name__))

    def storage_dtype(self, name, x, requested):
        have = x.dtype.name
        if have == "uint16":
            if requested != "bfloat16":
                raise TypeError("moba: %s is uint16; raw bfloat16 bits need dtype=\"bfloat16\"" % name)
            return "bfloat16"
        if have not in STORAGE_DTYPES:
            raise TypeError("moba: %s has dtype %s; supported: float32, float16, bfloat16 "
                            "(ml_dtypes.bfloat16, or uint16 raw bits with dtype=\"bfloat16\")" % (name, have))
        if requested is not None and requested != have:
            raise TypeError("moba: %s has dtype %s but dtype=%r was given" % (name, have, requested))
        return have

    def same_place(self, name, x, ref):
        if x.dtype != ref.dtype:
            raise TypeError("moba: %s has dtype %s, q has %s (all must match)" % (name, x.dtype, ref.dtype))

    def contiguous(self, x):
        return np.ascontiguousarray(x)

    def ptr(self, x):
        return x.ctypes.data

    def empty(self, shape, like):
        return np.empty(shape, dtype=like.dtype)

    def empty_f32(self, shape, like):
        return np.empty(shape, dtype=np.float32)

    def empty_i32(self, shape, like):
        return np.empty(shape, dtype=np.int32)

    def backend(self, ref):
        return _lib.BACKEND_CPU, None

    def workspace(self, nbytes, ref):
        return None, 0  # the library allocates host scratch itself


class TorchTensors:
    """The PyTorch face: CPU tensors -> CPU backend; CUDA tensors -> CUDA backend on the current stream."""
    kind = "torch tensor"

    def __init__(self):
        self.torch = _torch()
        t = self.torch
        self.names = {t.float32: "float32", t.float16: "float16", t.bfloat16: "bfloat16"}

    def check_kind(self, name, x):
        if not is_torch_tensor(x):
            raise TypeError("moba: %s must be a torch tensor like q, got %s" % (name, type(x).__name__))

    def storage_dtype(self, name, x, requested):
        have = self.names.get(x.dtype)
        if have is None:
            raise TypeError("moba: %s has dtype %s; supported: float32, float16, bfloat16" % (name, x.dtype))
        if requested is not None and requested != have:
            raise TypeError("moba: %s has dtype %s but dtype=%r was given" % (name, x.dtype, requested))
        return have

    def same_place(self, name, x, ref):
        if x.dtype != ref.dtype:
            raise TypeError("moba: %s has dtype %s, q has %s (all must match)" % (name, x.dtype, ref.dtype))
        if x.device != ref.device:
            raise ValueError("moba: %s is on %s, q is on %s (all must be on one device)" % (name, x.device, ref.device))

    def contiguous(self, x):
        return x.detach().contiguous()

    def ptr(self, x):
        return x.data_ptr()

    def empty(self, shape, like):
        return self.torch.empty(shape, dtype=like.dtype, device=like.device)

    def empty_f32(self, shape, like):
        return self.torch.empty(shape, dtype=self.torch.float32, device=like.device)

    def empty_i32(self, shape, like):
        return self.torch.empty(shape, dtype=self.torch.int32, device=like.device)

    def backend(self, ref):
        dev = ref.device
        if dev.type == "cpu":
            return _lib.BACKEND_CPU, None
        if dev.type != "cuda":
            raise ValueError("moba: tensors on %s are not supported (cpu or cuda)" % dev)
        if not _lib.backend_available(_lib.BACKEND_CUDA):
            raise RuntimeError("moba: the tensors are on %s but this libmoba (%s) has no usable CUDA backend "
                               "(built without CUDA, or no device visible to it)" % (dev, _lib.library_path()))
        return _lib.BACKEND_CUDA, self.torch.cuda.current_stream(dev).cuda_stream

    def workspace(self, nbytes, ref):
        if ref.device.type != "cuda" or nbytes == 0:
            return None, 0
        # Device scratch from torch's caching allocator: no cudaMalloc/cudaFree (and their syncs) per call.
        buf = self.torch.empty(nbytes, dtype=self.torch.uint8, device=ref.device)
        return buf, nbytes


def arrays_for(q):
    if isinstance(q, np.ndarray):
        return NumpyArrays()
    if is_torch_tensor(q):
        return TorchTensors()
    raise TypeError("moba: q must be a NumPy array or a torch tensor, got %s" % type(q).__name__)


class Call:
    """One library call: checked, contiguous inputs, filled params, and a way to allocate outputs."""

    def __init__(self, q, k, cu_seqlens, block_size, top_k, softmax_scale=None, dtype=None, deterministic=False):
        self.A = arrays_for(q)
        requested = dtype_name(dtype)
        self.A.check_kind("k", k)
        for name, x in (("q", q), ("k", k)):
            if x.ndim != 3:
                raise ValueError("moba: %s must be 3-D [total, heads, head_dim], got shape %s" % (name, tuple(x.shape)))
        self.storage = self.A.storage_dtype("q", q, requested)
        self.requested = requested
        self.q_shape = tuple(int(n) for n in q.shape)
        self.kv_shape = tuple(int(n) for n in k.shape)
        total, hq, d = self.q_shape
        if self.kv_shape[0] != total or self.kv_shape[2] != d:
            raise ValueError("moba: k has shape %s, which does not fit q %s ([total, num_kv_heads, head_dim])"
                             % (self.kv_shape, self.q_shape))
        self.ref = q
        self.A.same_place("k", k, q)
        self.cu = host_cu_seqlens(cu_seqlens)
        if softmax_scale is not None:
            softmax_scale = float(softmax_scale)
            if not softmax_scale > 0 or softmax_scale == float("inf"):
                raise ValueError("moba: softmax_scale must be a finite number > 0, got %r" % softmax_scale)

        p = _lib.new_params()
        p.backend, p.cuda_stream = self.A.backend(q)
        p.dtype = _lib.DTYPE_CODES[self.storage]
        p.num_seqs = c_int("number of sequences", self.cu.size - 1)
        p.total_tokens = total
        p.cu_seqlens = self.cu.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        p.num_q_heads = c_int("num_q_heads", hq)
        p.num_kv_heads = c_int("num_kv_heads", self.kv_shape[1])
        p.head_dim = c_int("head_dim", d)
        p.block_size = c_int("block_size", block_size)
        p.top_k = c_int("top_k", top_k)
        p.softmax_scale = 0.0 if softmax_scale is None else softmax_scale
        p.deterministic = 1 if deterministic else 0
        self.p = p

    def input(self, name, x, shape):
        """x checked against q (kind, dtype, device) and `shape`, made contiguous."""
        self.A.check_kind(name, x)
        self.A.storage_dtype(name, x, self.requested or self.storage)
        self.A.same_place(name, x, self.ref)
        if tuple(x.shape) != shape:
            raise ValueError("moba: %s has shape %s, expected %s" % (name, tuple(x.shape), shape))
        return self.A.contiguous(x)

    def side_input(self, name, x, dtype, shape, dims):
        """An input with a dtype of its own (lse: float32, block_idx: int32): its kind, dtype, shape
        (named dims in messages) and device checked; contiguous."""
        self.A.check_kind(name, x)
        if str(x.dtype).replace("torch.", "") != dtype:
            raise TypeError("moba: %s must be %s, got %s" % (name, dtype, x.dtype))
        if tuple(x.shape) != shape:
            raise ValueError("moba: %s has shape %s, expected %s = %s" % (name, tuple(x.shape), dims, shape))
        if is_torch_tensor(x) and x.device != self.ref.device:
            raise ValueError("moba: %s is on %s, q is on %s" % (name, x.device, self.ref.device))
        return self.A.contiguous(x)

    def lse_input(self, lse):
        return self.side_input("lse", lse, "float32", (self.q_shape[1], self.q_shape[0]), "[num_q_heads, total]")

    def run(self, fn, op, *pointers):
        """Calls fn(params, *pointers, workspace, bytes) with the device guard and workspace in place."""
        ctx = None
        if self.p.backend == _lib.BACKEND_CUDA:
            ctx = self.A.torch.cuda.device(self.ref.device)
            ctx.__enter__()
        try:
            nbytes = 0
            if self.p.backend == _lib.BACKEND_CUDA:
                size = ctypes.c_size_t(0)
                _lib.check(_lib.lib().moba_workspace_size(ctypes.byref(self.p), op, ctypes.byref(size)))
                nbytes = size.value
            ws, ws_bytes = self.A.workspace(nbytes, self.ref)
            ws_ptr = None if ws is None else self.A.ptr(ws)
            _lib.check(fn(ctypes.byref(self.p), *pointers, ws_ptr, ws_bytes))
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)


def forward(q, k, v, cu_seqlens, block_size, top_k, softmax_scale=None, dtype=None, want_lse=True,
            want_block_idx=False):
    """(o, lse, block_idx): o like q, lse float32 [num_q_heads, total], block_idx int32 [num_q_heads, total,
    top_k], the selection the forward used (moba_params.block_idx); lse / block_idx None when not wanted."""
    c = Call(q, k, cu_seqlens, block_size, top_k, softmax_scale, dtype)
    A = c.A
    qc = c.input("q", q, c.q_shape)
    kc = c.input("k", k, c.kv_shape)
    vc = c.input("v", v, c.kv_shape)
    o = A.empty(c.q_shape, qc)
    lse = A.empty_f32((c.q_shape[1], c.q_shape[0]), qc) if want_lse else None
    lse_ptr = None if lse is None else ctypes.cast(A.ptr(lse), ctypes.POINTER(ctypes.c_float))
    idx = None
    if want_block_idx:
        idx = A.empty_i32((c.q_shape[1], c.q_shape[0], c.p.top_k if c.p.top_k > 0 else 0), qc)
        c.p.block_idx = ctypes.cast(A.ptr(idx), ctypes.POINTER(ctypes.c_int32))
    c.run(_lib.lib().moba_forward, _lib.OP_FORWARD, A.ptr(qc), A.ptr(kc), A.ptr(vc), A.ptr(o), lse_ptr)
    return o, lse, idx


def backward(do, q, k, v, o, lse, cu_seqlens, block_size, top_k, softmax_scale=None, dtype=None,
             deterministic=False, block_idx=None):
    """(dq, dk, dv) of the attention whose forward gave o and lse; block_idx: that forward's selection
    (skips the routing pass), or None to route again."""
    c = Call(q, k, cu_seqlens, block_size, top_k, softmax_scale, dtype, deterministic)
    A = c.A
    qc = c.input("q", q, c.q_shape)
    kc = c.input("k", k, c.kv_shape)
    vc = c.input("v", v, c.kv_shape)
    doc = c.input("do", do, c.q_shape)
    oc = c.input("o", o, c.q_shape)
    lsec = c.lse_input(lse)
    if block_idx is not None:
        idx = c.side_input("block_idx", block_idx, "int32", (c.q_shape[1], c.q_shape[0], c.p.top_k),
                           "[num_q_heads, total, top_k]")
        c.keep = idx  # alive until the call returns
        c.p.block_idx = ctypes.cast(A.ptr(idx), ctypes.POINTER(ctypes.c_int32))
    dq, dk, dv = A.empty(c.q_shape, qc), A.empty(c.kv_shape, qc), A.empty(c.kv_shape, qc)
    lse_ptr = ctypes.cast(A.ptr(lsec), ctypes.POINTER(ctypes.c_float))
    c.run(_lib.lib().moba_backward, _lib.OP_BACKWARD, A.ptr(doc), A.ptr(qc), A.ptr(kc), A.ptr(vc), A.ptr(oc),
          lse_ptr, A.ptr(dq), A.ptr(dk), A.ptr(dv))
    return dq, dk, dv


def route(q, k, cu_seqlens, block_size, top_k, dtype=None):
    """block_idx int32 [num_q_heads, total, top_k]: selected blocks per (head, token), ascending, -1 padded."""
    c = Call(q, k, cu_seqlens, block_size, top_k, None, dtype)
    A = c.A
    qc = c.input("q", q, c.q_shape)
    kc = c.input("k", k, c.kv_shape)
    idx = A.empty_i32((c.q_shape[1], c.q_shape[0], c.p.top_k if c.p.top_k > 0 else 0), qc)
    idx_ptr = ctypes.cast(A.ptr(idx), ctypes.POINTER(ctypes.c_int32))
    c.run(_lib.lib().moba_route, _lib.OP_ROUTE, A.ptr(qc), A.ptr(kc), idx_ptr)
    return idx
