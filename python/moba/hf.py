"""Hugging Face transformers integration: moba.hf.register(block_size, top_k) adds an attention implementation
named "moba", selected with `attn_implementation="moba"` (from_pretrained / from_config) or
`model.config._attn_implementation = "moba"`.

transformers calls it as fn(module, query, key, value, attention_mask, dropout=, scaling=, **kwargs) with
query [batch, q_heads, q_len, d], key/value [batch, kv_heads, kv_len, d] (its cache included), and wants
([batch, q_len, q_heads, d], weights or None) back. Like the reference's register_moba / moba_layer:
  prefill (q_len == kv_len): MoBA over each batch row as one sequence (or over the packed sequences given by
    cu_seq_lens_q when batch is 1); the attention_mask is not read, so right padding is exact (a causal row never
    sees later padding) and left padding is not supported. A query longer than 1 with no mask and a longer key
    is a prefill into an empty static cache (transformers' SDPA convention: upper-left causal; the keys past
    q_len are unfilled), so MoBA over the first q_len keys;
  decode / chunked prefill (q_len != kv_len), decode="moba" (the default): MoBA over the cache through a
    moba.KVCache kept on the attention module (module._moba_decode), equal to the prefill's rows at those
    positions (bitwise on the CPU). A call that continues the previous one (same shapes, the cache holds
    kv_len - q_len tokens whose last block equals key/value there) appends only the q_len new keys/values; any
    other call (first decode after a prefill, a new generation, a cropped or reordered cache) rebuilds it from
    all kv_len tokens, with room for twice as many. Full attention instead (the path decode="full" always takes)
    when the mask hides more than the causal mask does (padding, static caches: MoBA cannot skip left padding,
    and its blocks would count masked tokens), when gradients are needed, or when the backend has no decode
    path (CUDA today: NotImplementedError, remembered per module).
  full attention is SDPA, bottom-right causal, with transformers' mask when it gives one.
"""
import functools

import numpy as np
import torch

from . import autograd
from .cache import KVCache


def _full_attention(query, key, value, attention_mask, scaling):
    """Dense attention of the last q_len positions over all kv_len keys (query i sits at kv_len - q_len + i)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    group = query.shape[1] // key.shape[1]
    if group > 1:
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
    # No mask: q_len is 1 (the newest token sees the whole cache); attention_forward routes longer queries
    # without a mask to the prefill.
    mask = None if attention_mask is None else attention_mask[:, :, :, :kv_len]
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous()


def _masks_more_than_causal(attention_mask, q_len, kv_len):
    """True if the mask hides a key that bottom-right causal attention would see (padding, unfilled static cache
    slots). Bool masks keep True; float masks are additive (0 keeps). Reads the mask (a sync on a GPU)."""
    if attention_mask is None:
        return False
    mask = attention_mask[:, :, :, :kv_len]
    keep = mask if mask.dtype == torch.bool else mask == 0
    pos_q = torch.arange(kv_len - q_len, kv_len, device=mask.device)
    causal = torch.arange(kv_len, device=mask.device)[None, :] <= pos_q[:, None]
    return mask.shape[-1] < kv_len or bool((causal & ~keep).any())


class _DecodeState:
    """A module's KVCache and what it was built for."""

    def __init__(self, key, q_heads, block_size, kv_len):
        batch, kv_heads, _, d = key.shape
        capacity = block_size
        while capacity < 2 * kv_len:  # doubling: a rebuild re-appends everything, so amortized O(1) per token
            capacity *= 2
        self.geometry = _geometry(key, q_heads, block_size)
        self.cache = KVCache(batch, capacity, q_heads, kv_heads, d, block_size, 1, dtype=key.dtype,
                             device=key.device)
        self.held = 0  # tokens per batch row (all rows hold the same, as transformers' cache does)

    def continues(self, key, value, q_heads, block_size, q_len):
        """Whether key/value [batch, kv_heads, kv_len, d] are the cached tokens plus q_len new ones, judged by the
        shapes and the last (up to) block_size cached tokens, not the whole cache: a reorder or a new sequence
        differs there (a reorder of rows that agree on their last block_size tokens would go unnoticed)."""
        held = self.held
        if self.geometry != _geometry(key, q_heads, block_size) or key.shape[2] - q_len != held or held == 0:
            return False
        if held + q_len > self.cache.capacity:
            return False
        lo = max(0, held - block_size)
        return (torch.equal(self.cache.k_cache[:, lo:held], key[:, :, lo:held].transpose(1, 2)) and
                torch.equal(self.cache.v_cache[:, lo:held], value[:, :, lo:held].transpose(1, 2)))

    def append(self, key, value, start):
        """Appends tokens start.. of key/value [batch, kv_heads, kv_len, d] to every row."""
        batch, kv_heads, kv_len, d = key.shape
        n = kv_len - start
        k = key[:, :, start:].transpose(1, 2).reshape(batch * n, kv_heads, d)
        v = value[:, :, start:].transpose(1, 2).reshape(batch * n, kv_heads, d)
        self.cache.append(k, v, np.arange(0, (batch + 1) * n, n, dtype=np.int32))
        self.held += n


def _geometry(key, q_heads, block_size):
    batch, kv_heads, _, d = key.shape
    return batch, q_heads, kv_heads, d, key.dtype, key.device, block_size


def _moba_decode(module, query, key, value, scaling, block_size, top_k):
    """MoBA for the last q_len positions over the module's KVCache (updated to hold key/value's kv_len tokens).
    Returns [batch, q_len, q_heads, d], or None where the backend has no decode path for this device."""
    unsupported = getattr(module, "_moba_decode_unsupported", set())
    if key.device.type in unsupported:
        return None
    batch, q_heads, q_len, d = query.shape
    kv_len = key.shape[2]
    state = getattr(module, "_moba_decode", None)
    try:
        if state is not None and state.continues(key, value, q_heads, block_size, q_len):
            state.append(key, value, kv_len - q_len)
        else:
            module._moba_decode = None  # a failed rebuild leaves no half-built state
            state = _DecodeState(key, q_heads, block_size, kv_len)
            state.append(key, value, 0)
            module._moba_decode = state
        state.cache.top_k, state.cache.softmax_scale = top_k, scaling
        q = query.transpose(1, 2).reshape(batch * q_len, q_heads, d)
        o = state.cache.attend(q, np.arange(0, (batch + 1) * q_len, q_len, dtype=np.int32))
    except NotImplementedError:  # e.g. "the CUDA backend has no decode path yet": full attention from now on
        module._moba_decode = None
        module._moba_decode_unsupported = unsupported | {key.device.type}
        return None
    except BaseException:
        module._moba_decode = None  # the cache may hold tokens this call did not finish with
        raise
    return o.view(batch, q_len, q_heads, d)


def attention_forward(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None, *,
                      block_size, top_k, decode="moba", **kwargs):
    """The function registered as "moba" (block_size, top_k and decode bound by register())."""
    if not getattr(module, "is_causal", True):
        raise ValueError("moba: MoBA attention is causal; this module is not (is_causal=False)")
    if dropout:
        raise ValueError("moba: attention dropout is not supported (got dropout=%r); set attention_dropout=0"
                         % (dropout,))
    batch, q_heads, q_len, d = query.shape
    kv_len = key.shape[2]
    if attention_mask is None and 1 < q_len < kv_len:
        # transformers' SDPA convention (is_causal, upper-left): the cache was empty, so the queries are positions
        # 0..q_len-1 and the keys after them are a static cache's unfilled slots: a prefill over the first q_len.
        key, value, kv_len = key[:, :, :q_len], value[:, :, :q_len], q_len
    if q_len != kv_len:
        needs_grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
        if decode == "moba" and not needs_grad and not _masks_more_than_causal(attention_mask, q_len, kv_len):
            o = _moba_decode(module, query, key, value, scaling, block_size, top_k)
            if o is not None:
                return o, None
        return _full_attention(query, key, value, attention_mask, scaling), None

    module._moba_decode = None  # a new sequence; the first decode step rebuilds from this call's cache
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


def register(block_size, top_k, name="moba", decode="moba"):
    """Registers MoBA (block_size tokens per block, top_k blocks per query counting its own) as the attention
    implementation `name` in transformers, for every model. decode: "moba" (decode steps through a moba.KVCache
    kept per attention module) or "full" (full attention over the cache, as in the paper). Returns the
    registered function."""
    if decode not in ("moba", "full"):
        raise ValueError("moba: decode must be 'moba' or 'full', got %r" % (decode,))
    from transformers import modeling_utils

    fn = functools.partial(attention_forward, block_size=int(block_size), top_k=int(top_k), decode=decode)
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
