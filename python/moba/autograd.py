"""PyTorch autograd for MoBA: o = moba(q, k, v) with o.backward() giving dq, dk, dv through moba_backward.

Routing is not differentiable (as in the reference): the gradient is that of attention over the selected keys.
"""
import torch

from . import _ops


class MobaAttentionFunction(torch.autograd.Function):
    """forward(q, k, v, cu_seqlens_host, block_size, top_k, softmax_scale, dtype, deterministic) -> (o, lse)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_host, block_size, top_k, softmax_scale, dtype, deterministic):
        o, lse = _ops.forward(q, k, v, cu_host, block_size, top_k, softmax_scale, dtype)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (cu_host, block_size, top_k, softmax_scale, dtype, deterministic)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    @torch.autograd.function.once_differentiable  # moba_backward is not itself differentiable
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        cu_host, block_size, top_k, softmax_scale, dtype, deterministic = ctx.args
        dq, dk, dv = _ops.backward(do, q, k, v, o, lse, cu_host, block_size, top_k, softmax_scale, dtype,
                                   deterministic)
        return dq, dk, dv, None, None, None, None, None, None


def attention(q, k, v, cu_seqlens, block_size, top_k, softmax_scale=None, return_lse=False, dtype=None,
              deterministic=False):
    """moba.attention for torch tensors: differentiable in q, k, v; lse (if returned) is not."""
    # One host copy of cu_seqlens per forward (a sync if it is a CUDA tensor); backward reuses it.
    cu_host = _ops.host_cu_seqlens(cu_seqlens)
    needs_grad = torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in (q, k, v))
    if not needs_grad:
        o, lse = _ops.forward(q, k, v, cu_host, block_size, top_k, softmax_scale, dtype, want_lse=return_lse)
    else:
        o, lse = MobaAttentionFunction.apply(q, k, v, cu_host, block_size, top_k, softmax_scale, dtype,
                                             deterministic)
    return (o, lse) if return_lse else o


def moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk):
    """Drop-in for the reference's moba_attn_varlen (MoonshotAI/MoBA): q [total, H, d], k/v [total, Hkv, d]
    (the reference needs Hkv == H; GQA works here too), cu_seqlens int32, max_seqlen accepted and unused,
    moba_chunk_size = block_size, moba_topk = top_k (counting the query's own block). Returns o like q."""
    return attention(q, k, v, cu_seqlens, moba_chunk_size, moba_topk)
