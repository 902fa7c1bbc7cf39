"""KVCache: MoBA decode over a KV cache (moba_cache_append / moba_cache_attend of include/moba.h).

    cache = moba.KVCache(num_seqs, capacity, num_q_heads, num_kv_heads, head_dim, block_size, top_k)
    cache.append(k_new, v_new, cu_new)        # keys/values of new tokens, varlen over the sequences
    o = cache.attend(q, cu_q)                 # the newest tokens' queries: MoBA over everything cached

The cache owns its buffers (k_cache, v_cache, centroids, a block_table when paged) and seq_lens, the tokens
each sequence holds (host int32). The output of attend equals moba.attention's at those positions over the
same tokens (bitwise on the CPU).
"""
import ctypes
import types

import numpy as np

from . import _lib, _ops

NUMPY_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bf16: raw bits


class KVCache:
    """A KV cache of num_seqs sequences of up to `capacity` tokens each.

    dtype: "float32", "float16" or "bfloat16" (NumPy or torch dtypes too). device: None for NumPy arrays (CPU
    backend; a bfloat16 cache holds uint16 raw bits and takes uint16 or ml_dtypes.bfloat16 inputs), or a torch
    device ("cpu", "cuda:0", torch.device) for torch tensors on it (CUDA: the current stream).
    page_size: 0 for contiguous caches k_cache, v_cache [num_seqs, capacity, num_kv_heads, head_dim]; else a
    divisor of block_size and of capacity: k_cache, v_cache [num_pages, page_size, num_kv_heads, head_dim] and
    block_table int32 [num_seqs, capacity // page_size], pages handed out in order as sequences grow (num_pages
    defaults to enough for every sequence at capacity; -1 marks pages not handed out).
    top_k, softmax_scale (None = 1/sqrt(head_dim)) and num_threads (0 = OpenMP's default) are read by every
    attend and may be changed between calls; block_size fixes the centroids and may not."""

    def __init__(self, num_seqs, capacity, num_q_heads, num_kv_heads, head_dim, block_size, top_k,
                 dtype="float32", page_size=0, num_pages=None, softmax_scale=None, device=None, num_threads=0):
        self.dtype = _ops.dtype_name(dtype)
        if self.dtype is None:
            raise TypeError("moba: KVCache needs a dtype (float32, float16 or bfloat16)")
        c = _ops.c_int
        num_seqs, capacity, page_size = c("num_seqs", num_seqs), c("capacity", capacity), c("page_size", page_size)
        Hq, Hkv, d = c("num_q_heads", num_q_heads), c("num_kv_heads", num_kv_heads), c("head_dim", head_dim)
        if device is None:
            self._A = _ops.NumpyArrays()
            self._torch_device = None
        else:
            self._A = _ops.TorchTensors()
            dev = self._A.torch.device(device)
            if dev.type == "cuda" and dev.index is None:  # "cuda" means the current GPU: pin it, as tensors do
                dev = self._A.torch.device("cuda", self._A.torch.cuda.current_device())
            self._torch_device = dev
        p = _lib.new_cache_params()
        p.dtype = _lib.DTYPE_CODES[self.dtype]
        p.num_seqs, p.capacity, p.page_size = num_seqs, capacity, page_size
        p.num_q_heads, p.num_kv_heads, p.head_dim = Hq, Hkv, d
        p.block_size = c("block_size", block_size)
        if page_size <= 0 and num_pages is not None:
            raise ValueError("moba: num_pages (%r) is for paged caches; page_size is %d" % (num_pages, page_size))
        if page_size > 0:
            if capacity % page_size:
                raise ValueError("moba: capacity (%d) must be a multiple of page_size (%d) for a paged cache"
                                 % (capacity, page_size))
            p.max_pages_per_seq = capacity // page_size
            p.num_pages = num_seqs * p.max_pages_per_seq if num_pages is None else _ops.c_int("num_pages", num_pages)
        self._p = p
        self.top_k, self.softmax_scale, self.num_threads = top_k, softmax_scale, num_threads
        self.seq_lens = np.zeros(max(num_seqs, 0), dtype=np.int32)
        # The library checks the whole layout (and whether the backend decodes) before anything is allocated.
        self._check(np.zeros(max(num_seqs, 0) + 1, dtype=np.int32), self._params(False))

        self.page_size, self.block_size = page_size, p.block_size
        if page_size > 0:
            kv_shape = (p.num_pages, page_size, Hkv, d)
            self._table = np.full((num_seqs, p.max_pages_per_seq), -1, dtype=np.int32)  # host copy
            self._next_page = 0
        else:
            kv_shape = (num_seqs, capacity, Hkv, d)
            self._table = None
        self.k_cache, self.v_cache = self._zeros(kv_shape), self._zeros(kv_shape)
        self.centroids = self._zeros((num_seqs, capacity // p.block_size, Hkv, d))
        self.block_table = self._device_table(self._table)

    # ---- public calls ----

    def append(self, k_new, v_new, cu_new=None):
        """Appends cu_new[s+1] - cu_new[s] tokens to sequence s: k_new, v_new [cu_new[-1], num_kv_heads,
        head_dim] packed in sequence order (cu_new None: one token per sequence). Writes the centroid of every
        block that becomes full, then adds the lengths to seq_lens. On an error nothing is changed."""
        p = self._params(False)
        shape = (None, p.num_kv_heads, p.head_dim)
        k = self._input("k_new", k_new, shape)
        cu = self._cu("cu_new", cu_new, k.shape[0])
        v = self._input("v_new", v_new, tuple(k.shape))
        table, next_page = self._grow_pages(cu)
        grown = table is not None and next_page != self._next_page
        block_table = self._device_table(table) if grown else self.block_table
        A = self._A
        self._run(_lib.lib().moba_cache_append, p, self.seq_lens.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                  cu.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), A.ptr(k), A.ptr(v), A.ptr(self.k_cache),
                  A.ptr(self.v_cache), self._table_ptr(block_table), A.ptr(self.centroids))
        if grown:
            self._table, self._next_page, self.block_table = table, next_page, block_table
        self.seq_lens += np.diff(cu).astype(np.int32)

    def attend(self, q, cu_q=None, full_attention=False, return_lse=False):
        """Attention for the newest tokens: q [cu_q[-1], num_q_heads, head_dim] holds, for sequence s, the
        queries of its last cu_q[s+1] - cu_q[s] positions (cu_q None: one query per sequence, its last token).
        MoBA routing over the cached centroids, or every cached key with full_attention=True. Returns o like q,
        or (o, lse) with lse float32 [num_q_heads, cu_q[-1]]."""
        p = self._params(full_attention)
        q = self._input("q", q, (None, p.num_q_heads, p.head_dim))
        cu = self._cu("cu_q", cu_q, q.shape[0])
        A = self._A
        o = A.empty(tuple(q.shape), q)
        lse = A.empty_f32((p.num_q_heads, q.shape[0]), q) if return_lse else None
        lse_ptr = None if lse is None else ctypes.cast(A.ptr(lse), ctypes.POINTER(ctypes.c_float))
        seq_lens = self.seq_lens.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        cu_ptr = cu.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        ws, nbytes = None, 0
        if p.backend == _lib.BACKEND_CUDA:  # device scratch from torch's caching allocator
            size = ctypes.c_size_t(0)
            _lib.check(_lib.lib().moba_cache_workspace_size(ctypes.byref(p), seq_lens, cu_ptr, ctypes.byref(size)))
            ws, nbytes = A.workspace(size.value, self.k_cache)
        self._run(_lib.lib().moba_cache_attend, p, seq_lens, cu_ptr, A.ptr(q), A.ptr(self.k_cache),
                  A.ptr(self.v_cache), self._table_ptr(self.block_table), A.ptr(self.centroids), A.ptr(o), lse_ptr,
                  None if ws is None else A.ptr(ws), nbytes)
        return (o, lse) if return_lse else o

    @property
    def num_seqs(self):
        return self._p.num_seqs

    @property
    def capacity(self):
        return self._p.capacity

    def __repr__(self):
        layout = "pages of %d" % self.page_size if self.page_size else "contiguous"
        return ("KVCache(num_seqs=%d, capacity=%d, heads=%d/%d, head_dim=%d, block_size=%d, top_k=%r, %s, %s, %s)"
                % (self._p.num_seqs, self._p.capacity, self._p.num_q_heads, self._p.num_kv_heads, self._p.head_dim,
                   self.block_size, self.top_k, self.dtype, layout, self._A.kind))

    # ---- helpers ----

    def _params(self, full_attention):
        """The call's moba_cache_params: the fixed layout plus this call's routing settings."""
        p = _lib.CacheParams.from_buffer_copy(self._p)
        scale = self.softmax_scale
        if scale is not None:
            scale = float(scale)
            if not scale > 0 or scale == float("inf"):
                raise ValueError("moba: softmax_scale must be a finite number > 0, got %r" % scale)
        p.softmax_scale = 0.0 if scale is None else scale
        p.top_k = _ops.c_int("top_k", self.top_k)
        p.num_threads = _ops.c_int("num_threads", self.num_threads)
        p.full_attention = 1 if full_attention else 0
        if self._torch_device is not None:
            p.backend, p.cuda_stream = self._A.backend(types.SimpleNamespace(device=self._torch_device))
        return p

    def _check(self, cu, p):
        size = ctypes.c_size_t(0)
        _lib.check(_lib.lib().moba_cache_workspace_size(ctypes.byref(p), self.seq_lens.ctypes.data_as(
            ctypes.POINTER(ctypes.c_int32)), cu.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), ctypes.byref(size)))

    def _zeros(self, shape):
        if self._torch_device is None:
            return np.zeros(shape, dtype=NUMPY_STORAGE[self.dtype])
        t = self._A.torch
        return t.zeros(shape, dtype={v: k for k, v in self._A.names.items()}[self.dtype], device=self._torch_device)

    def _device_table(self, table):
        """The block table as the caller sees it and the backend reads it: the host array for NumPy, a torch
        int32 tensor on the cache's device otherwise (sharing the host array's memory on the CPU)."""
        if table is None or self._torch_device is None:
            return table
        return self._A.torch.from_numpy(table).to(self._torch_device)

    def _table_ptr(self, table):
        return None if table is None else self._A.ptr(table)

    def _input(self, name, x, shape):
        """x checked: the cache's kind (and device), its storage dtype, shape [any, shape[1], shape[2]]; contiguous."""
        A = self._A
        A.check_kind(name, x)
        A.storage_dtype(name, x, self.dtype)
        if self._torch_device is not None and x.device != self._torch_device:
            raise ValueError("moba: %s is on %s, the cache is on %s" % (name, x.device, self._torch_device))
        got = tuple(int(n) for n in x.shape)
        if len(got) != 3 or any(want is not None and g != want for g, want in zip(got, shape)):
            want = "[tokens, %d, %d]" % shape[1:] if shape[0] is None else str(shape)
            raise ValueError("moba: %s has shape %s, expected %s" % (name, got, want))
        return A.contiguous(x)

    def _cu(self, name, cu, total):
        """cu_new / cu_q as host int32 [num_seqs + 1] ending at total (the library reads exactly that many)."""
        n = self._p.num_seqs
        if cu is None:
            if total != n:
                raise ValueError("moba: %s not given: one token per sequence needs %d rows, got %d" % (name, n, total))
            return np.arange(n + 1, dtype=np.int32)
        cu = _ops.host_cu_seqlens(cu).copy()
        if cu.shape != (n + 1,):
            raise ValueError("moba: %s has %d entries, expected num_seqs + 1 = %d" % (name, cu.size, n + 1))
        if cu[-1] != total:
            raise ValueError("moba: %s[-1] (%d) must equal the number of rows given (%d)" % (name, cu[-1], total))
        return cu

    def _grow_pages(self, cu):
        """A copy of the block table with pages handed out (in order) for what cu appends; (None, 0) when
        contiguous. Lengths the library will refuse are left to it."""
        if self._table is None:
            return None, 0
        table, nxt, P = self._table.copy(), self._next_page, self.page_size
        for s in range(self._p.num_seqs):
            end = int(self.seq_lens[s]) + int(cu[s + 1]) - int(cu[s])
            for g in range(min(-(-end // P), table.shape[1])):
                if table[s, g] < 0:
                    if nxt >= self._p.num_pages:
                        raise ValueError("moba: KVCache.append: the page pool is full (num_pages %d)" % self._p.num_pages)
                    table[s, g], nxt = nxt, nxt + 1
        return table, nxt

    def _run(self, fn, p, *pointers):
        """fn(&p, *pointers) under the CUDA device guard when the cache is on a GPU."""
        ctx = None
        if p.backend == _lib.BACKEND_CUDA:
            ctx = self._A.torch.cuda.device(self._torch_device)
            ctx.__enter__()
        try:
            _lib.check(fn(ctypes.byref(p), *pointers))
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
