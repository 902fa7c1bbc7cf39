"""moba: MoBA (Mixture of Block Attention) for NumPy and PyTorch, through libmoba (C, with a CUDA backend).

    o = moba.attention(q, k, v, cu_seqlens, block_size, top_k)

q [total, num_q_heads, head_dim], k/v [total, num_kv_heads, head_dim] (FlashAttention varlen layout),
cu_seqlens int32 [num_seqs + 1]. NumPy arrays run on the CPU; torch tensors on their device (CPU or CUDA, on
the current stream) and are differentiable. Decode over a KV cache: moba.KVCache (append, attend).
See docs/python.md.
"""
from . import _lib, _ops
from .cache import KVCache

__all__ = ["attention", "attention_backward", "route", "moba_attn_varlen", "KVCache", "version",
           "backend_available", "library_path"]


def attention(q, k, v, cu_seqlens, block_size, top_k, softmax_scale=None, return_lse=False, dtype=None,
              return_block_idx=False):
    """MoBA attention. Returns o (like q), plus lse float32 [num_q_heads, total] if return_lse, plus block_idx
    int32 [num_q_heads, total, top_k] (the selection it used, moba.route's format) if return_block_idx, in that
    order: o, (o, lse), (o, block_idx) or (o, lse, block_idx).

    block_size: tokens per key block; top_k: blocks per query counting its own (top_k >= blocks = full causal);
    softmax_scale: default 1/sqrt(head_dim); dtype: "float32" | "float16" | "bfloat16", needed only for NumPy
    uint16 arrays holding raw bfloat16 bits (otherwise it must match the arrays if given).
    Torch tensors go through a torch.autograd.Function: o.backward() gives q.grad, k.grad, v.grad (reusing the
    forward's selection: no second routing pass)."""
    if _ops.is_torch_tensor(q):
        from .autograd import attention as torch_attention
        return torch_attention(q, k, v, cu_seqlens, block_size, top_k, softmax_scale, return_lse, dtype,
                               return_block_idx=return_block_idx)
    o, lse, idx = _ops.forward(q, k, v, cu_seqlens, block_size, top_k, softmax_scale, dtype, want_lse=return_lse,
                               want_block_idx=return_block_idx)
    if not (return_lse or return_block_idx):
        return o
    return (o,) + ((lse,) if return_lse else ()) + ((idx,) if return_block_idx else ())


def attention_backward(do, q, k, v, o, lse, cu_seqlens, block_size, top_k, softmax_scale=None, dtype=None,
                       deterministic=False, block_idx=None):
    """(dq, dk, dv) for the output gradient do, given the forward's o and lse (from return_lse=True).
    dk/dv of a shared (GQA) kv head are summed over its q heads. deterministic: bitwise reproducible on CUDA.
    block_idx: the forward's selection (return_block_idx=True) to skip routing again; it must be that
    forward's (or moba.route's for the same inputs). The CPU refuses one that is not a valid selection."""
    return _ops.backward(do, q, k, v, o, lse, cu_seqlens, block_size, top_k, softmax_scale, dtype, deterministic,
                         block_idx=block_idx)


def route(q, k, cu_seqlens, block_size, top_k, dtype=None):
    """The blocks each (q head, token) attends: int32 [num_q_heads, total, top_k], block numbers counted from
    the token's sequence start, ascending, own block last, unused slots -1."""
    return _ops.route(q, k, cu_seqlens, block_size, top_k, dtype)


def moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk):
    """The reference's signature (MoonshotAI/MoBA moba_attn_varlen) for torch tensors; see moba.autograd."""
    from .autograd import moba_attn_varlen as impl
    return impl(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk)


def version():
    """Version string of the loaded libmoba."""
    return _lib.version()


def backend_available(backend="cpu"):
    """True if the loaded libmoba has this backend ("cpu" or "cuda") and, for CUDA, a usable device."""
    codes = {"cpu": _lib.BACKEND_CPU, "cuda": _lib.BACKEND_CUDA}
    if backend not in codes:
        raise ValueError("moba: backend must be 'cpu' or 'cuda', got %r" % (backend,))
    return _lib.backend_available(codes[backend])


def library_path():
    """Path of the loaded libmoba."""
    return _lib.library_path()
