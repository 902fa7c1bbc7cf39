"""PyTorch autograd for MoBA: o = moba(q, k, v) with o.backward() giving dq, dk, dv through moba_backward.

Routing is not differentiable (as in the reference): the gradient is that of attention over the selected keys.
"""
import torch

from . import _ops


class MobaAttentionFunction(torch.autograd.Function):
    """forward(q, k, v, cu_seqlens_host, block_size, top_k, softmax_scale, dtype, deterministic)
    -> (o, lse, block_idx). The forward's selection (block_idx, int32 [Hq, total, top_k]: 4 * top_k bytes per
    (token, q head), a quarter of o's bytes at d = 128, top_k = 16) is kept for the backward, which then does
    not route again (docs/python.md)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_host, block_size, top_k, softmax_scale, dtype, deterministic):
        o, lse, idx = _ops.forward(q, k, v, cu_host, block_size, top_k, softmax_scale, dtype, want_block_idx=True)
        ctx.save_for_backward(q, k, v, o, lse, idx)
        ctx.args = (cu_host, block_size, top_k, softmax_scale, dtype, deterministic)
        ctx.mark_non_differentiable(lse, idx)
        return o, lse, idx

    @staticmethod
    @torch.autograd.function.once_differentiable  # moba_backward is not itself differentiable
    def backward(ctx, do, _dlse, _didx):
        q, k, v, o, lse, idx = ctx.saved_tensors
        cu_host, block_size, top_k, softmax_scale, dtype, deterministic = ctx.args
        dq, dk, dv = _ops.backward(do, q, k, v, o, lse, cu_host, block_size, top_k, softmax_scale, dtype,
                                   deterministic, block_idx=idx)
        return dq, dk, dv, None, None, None, None, None, None


def attention(q, k, v, cu_seqlens, block_size, top_k, softmax_scale=None, return_lse=False, dtype=None,
              deterministic=False, return_block_idx=False):
    """moba.attention for torch tensors: differentiable in q, k, v; lse and block_idx (if returned) are not."""
    # One host copy of cu_seqlens per forward (a sync if it is a CUDA tensor); backward reuses it.
    cu_host = _ops.host_cu_seqlens(cu_seqlens)
    needs_grad = torch.is_grad_enabled() and any(getattr(t, "requires_grad", False) for t in (q, k, v))
    if not needs_grad:
        o, lse, idx = _ops.forward(q, k, v, cu_host, block_size, top_k, softmax_scale, dtype, want_lse=return_lse,
                                   want_block_idx=return_block_idx)
    else:
        o, lse, idx = MobaAttentionFunction.apply(q, k, v, cu_host, block_size, top_k, softmax_scale, dtype,
                                                  deterministic)
    if not (return_lse or return_block_idx):
        return o
    return (o,) + ((lse,) if return_lse else ()) + ((idx,) if return_block_idx else ())


def moba_attn_varlen(q, k, v, cu_seqlens, max_seqlen, moba_chunk_size, moba_topk):
    """Drop-in for the reference's moba_attn_varlen (MoonshotAI/MoBA): q [total, H, d], k/v [total, Hkv, d]
    (the reference needs Hkv == H; GQA works here too), cu_seqlens int32, max_seqlen accepted and unused,
    moba_chunk_size = block_size, moba_topk = top_k (counting the query's own block). Returns o like q."""
    return attention(q, k, v, cu_seqlens, moba_chunk_size, moba_topk)
