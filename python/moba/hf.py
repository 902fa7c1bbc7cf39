"""Hugging Face transformers integration: moba.hf.register(block_size, top_k) adds an attention implementation
named "moba", selected with `attn_implementation="moba"` (from_pretrained / from_config) or
`model.config._attn_implementation = "moba"`.

transformers calls it as fn(module, query, key, value, attention_mask, dropout=, scaling=, **kwargs) with
query [batch, q_heads, q_len, d], key/value [batch, kv_heads, kv_len, d], and wants ([batch, q_len, q_heads, d],
weights or None) back. Like the reference's register_moba / moba_layer:
  prefill (q_len == kv_len): MoBA over each batch row as one sequence (or over the packed sequences given by
    cu_seq_lens_q when batch is 1); the attention_mask is not read, so right padding is exact (a causal row never
    sees later padding) and left padding is not supported;
  decode / chunked prefill (q_len != kv_len): full attention over the cache (libmoba has no decode call yet),
    bottom-right causal, with the padding mask when transformers gives one.
"""
import functools

import torch

from . import autograd


def _full_attention(query, key, value, attention_mask, scaling):
    """Dense attention of the last q_len positions over all kv_len keys (query i sits at kv_len - q_len + i)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    group = query.shape[1] // key.shape[1]
    if group > 1:
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :kv_len]
    elif q_len == 1:
        mask = None  # the newest token sees the whole cache
    else:
        pos_q = torch.arange(kv_len - q_len, kv_len, device=query.device)
        mask = torch.arange(kv_len, device=query.device)[None, :] <= pos_q[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous()


def attention_forward(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None, *,
                      block_size, top_k, **kwargs):
    """The function registered as "moba" (block_size and top_k bound by register())."""
    if not getattr(module, "is_causal", True):
        raise ValueError("moba: MoBA attention is causal; this module is not (is_causal=False)")
    if dropout:
        raise ValueError("moba: attention dropout is not supported (got dropout=%r); set attention_dropout=0"
                         % (dropout,))
    batch, q_heads, q_len, d = query.shape
    kv_len = key.shape[2]
    if q_len != kv_len:
        return _full_attention(query, key, value, attention_mask, scaling), None

    # [batch, heads, len, d] -> varlen [batch * len, heads, d]
    q = query.transpose(1, 2).reshape(batch * q_len, q_heads, d)
    k = key.transpose(1, 2).reshape(batch * kv_len, key.shape[1], d)
    v = value.transpose(1, 2).reshape(batch * kv_len, value.shape[1], d)
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None or batch != 1:
        # Each row one sequence; built on the host, so no device sync.
        cu_seqlens = torch.arange(0, (batch + 1) * q_len, q_len, dtype=torch.int32)
    o = autograd.attention(q, k, v, cu_seqlens, block_size, top_k, softmax_scale=scaling)
    return o.view(batch, q_len, q_heads, d), None


def register(block_size, top_k, name="moba"):
    """Registers MoBA (block_size tokens per block, top_k blocks per query counting its own) as the attention
    implementation `name` in transformers, for every model. Returns the registered function."""
    from transformers import modeling_utils

    fn = functools.partial(attention_forward, block_size=int(block_size), top_k=int(top_k))
    interface = getattr(modeling_utils, "AttentionInterface", None)
    if interface is not None:
        interface.register(name, fn)  # class-wide: every model's interface instance sees it
    else:
        modeling_utils.ALL_ATTENTION_FUNCTIONS[name] = fn  # older transformers: a plain dict
    try:
        # Newer transformers build masks per implementation; SDPA-style masks are what the decode path reads.
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        AttentionMaskInterface.register(name, sdpa_mask)
    except ImportError:
        pass
    return fn
