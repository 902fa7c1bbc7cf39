"""moba.hf.register: MoBA as transformers' attention implementation "moba", on a tiny random Llama (no download).
Skipped when torch or transformers is not importable."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

if not hasattr(transformers.PreTrainedModel, "set_attn_implementation"):
    pytest.skip("needs transformers with AttentionInterface and set_attn_implementation (>= 4.56)",
                allow_module_level=True)

import moba  # noqa: E402
import moba.hf  # noqa: E402
from mobaref import moba as reference, rel_err  # noqa: E402

BLOCK = 16


def tiny_llama(hidden_size=64):
    # 4 heads: head_dim 16 by default; 256 gives head_dim 64, which the CUDA backend supports
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=hidden_size, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256)
    return transformers.LlamaForCausalLM(cfg).float()


def reference_attention(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None, **kwargs):
    """The float64 reference as a transformers attention function: each batch row one sequence."""
    b, hq, L, d = query.shape
    to_np = lambda x: x.detach().transpose(1, 2).reshape(b * L, x.shape[1], d).double().numpy()
    cu = np.arange(0, (b + 1) * L, L)
    o = reference(to_np(query), to_np(key), to_np(value), cu, BLOCK, reference_attention.top_k, scaling)["o"]
    return torch.from_numpy(o).to(query.dtype).view(b, L, hq, d), None


def logits(model, impl, ids):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids).logits


def test_hf_moba_matches_reference():
    model = tiny_llama().eval()
    ids = torch.randint(0, 97, (2, 70), generator=torch.Generator().manual_seed(1))
    for top_k in (1, 2, 3):
        moba.hf.register(BLOCK, top_k)
        reference_attention.top_k = top_k
        transformers.AttentionInterface.register("moba_reference", reference_attention)
        got, ref = logits(model, "moba", ids), logits(model, "moba_reference", ids)
        assert rel_err(got.numpy(), ref.numpy()) < 1e-5, top_k
    # sparse attention is really different from full attention here
    assert rel_err(logits(model, "moba", ids).numpy(), logits(model, "sdpa", ids).numpy()) > 1e-4


def test_hf_full_topk_equals_sdpa_with_gradients():
    # top_k beyond the block count is exactly causal attention: logits and every parameter's gradient agree.
    moba.hf.register(BLOCK, 1000)
    ids = torch.randint(0, 97, (2, 50), generator=torch.Generator().manual_seed(2))
    grads = {}
    for impl in ("sdpa", "moba"):
        model = tiny_llama().train()
        model.set_attn_implementation(impl)
        out = model(ids, labels=ids)
        out.loss.backward()
        grads[impl] = (out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert rel_err(grads["moba"][0].numpy(), grads["sdpa"][0].numpy()) < 1e-5
    for n, g in grads["sdpa"][1].items():
        assert rel_err(grads["moba"][1][n].numpy(), g.numpy()) < 1e-4, n


def test_hf_generate_full_topk_equals_sdpa():
    # top_k beyond the block count: prefill and MoBA decode steps are full attention, so greedy tokens equal SDPA's.
    moba.hf.register(BLOCK, 1000)
    model = tiny_llama().eval()
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(3))
    model.set_attn_implementation("moba")
    got = model.generate(ids, max_new_tokens=6, do_sample=False)
    model.set_attn_implementation("sdpa")
    want = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)


def generate_steps(model, ids, new_tokens):
    """Greedy generate(): (sequences, per-step logits [batch, new_tokens, vocab])."""
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, dim=1)


def attention_modules(model):
    return [m for m in model.modules() if hasattr(m, "k_proj")]


def check_decode_equals_prefill(model, ids, new_tokens):
    """Greedy generation with MoBA decode steps: every step's logits against one MoBA prefill over the final
    sequences at those positions. Returns (sequences, prefill logits)."""
    seqs, steps = generate_steps(model, ids, new_tokens)
    # the decode steps ran through each module's KVCache, which holds all but the last token
    for m in attention_modules(model):
        assert m._moba_decode is not None and m._moba_decode.held == seqs.shape[1] - 1
        np.testing.assert_array_equal(m._moba_decode.cache.seq_lens, [seqs.shape[1] - 1] * seqs.shape[0])
    with torch.no_grad():
        full = model(seqs).logits
    P = ids.shape[1]
    err = rel_err(steps.numpy(), full[:, P - 1:P - 1 + new_tokens].numpy())
    assert err < 1e-5, err
    print("decode steps vs prefill: rel_err %.2e over %d steps" % (err, new_tokens))
    return seqs, full


def test_hf_moba_decode_equals_prefill(monkeypatch):
    # BLOCK 16, top_k 2 over 130 tokens: routing prunes; every decode step equals the prefill at its position.
    moba.hf.register(BLOCK, 2)
    model = tiny_llama().eval()
    model.set_attn_implementation("moba")
    appended = []
    real_append = moba.hf._DecodeState.append
    monkeypatch.setattr(moba.hf._DecodeState, "append",
                        lambda self, k, v, start: (appended.append(k.shape[2] - start), real_append(self, k, v, start)))
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(7))
    seqs, full = check_decode_equals_prefill(model, ids, 100)
    # incremental: per layer, the first decode step appends its 31 tokens, the one past capacity 64 rebuilds
    # from 65, the other 97 steps append one each (re-reading the cache every step would append ~8000)
    layers = len(attention_modules(model))
    assert len(appended) == 99 * layers and sum(appended) == (31 + 65 + 97) * layers, (len(appended), sum(appended))
    # the sparse decode is really sparse: full attention gives other logits on the same sequences
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        dense = model(seqs).logits
    assert rel_err(full[:, 29:].numpy(), dense[:, 29:].numpy()) > 1e-3


def test_hf_decode_full_equals_sdpa():
    # decode="full": decode steps are full attention (the paper's choice). A 32-token prompt is 2 blocks, so the
    # top_k 2 prefill is full too, and greedy tokens equal SDPA's; MoBA decode over 72 tokens is not.
    ids = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(8))
    model = tiny_llama().eval()
    model.set_attn_implementation("sdpa")
    want, want_logits = generate_steps(model, ids, 40)
    moba.hf.register(BLOCK, 2, decode="full")
    model.set_attn_implementation("moba")
    got, got_logits = generate_steps(model, ids, 40)
    assert torch.equal(got, want)
    assert rel_err(got_logits.numpy(), want_logits.numpy()) < 1e-5
    assert all(getattr(m, "_moba_decode", None) is None for m in attention_modules(model))
    moba.hf.register(BLOCK, 2)
    model.set_attn_implementation("moba")
    _, sparse_logits = generate_steps(model, ids, 40)
    assert rel_err(sparse_logits.numpy(), want_logits.numpy()) > 1e-3
    with pytest.raises(ValueError, match="decode"):
        moba.hf.register(BLOCK, 2, decode="sparse")


def test_hf_second_generate_rebuilds():
    # A second, unrelated generation (another prompt, another batch size) on the same model: its decode steps
    # still equal its own prefill, and a third one with the first one's prompt repeats the first.
    moba.hf.register(BLOCK, 2)
    model = tiny_llama().eval()
    model.set_attn_implementation("moba")
    g = torch.Generator().manual_seed(9)
    first = torch.randint(0, 97, (2, 40), generator=g)
    seqs1, _ = check_decode_equals_prefill(model, first, 30)
    check_decode_equals_prefill(model, torch.randint(0, 97, (3, 69), generator=g), 25)
    seqs3, _ = check_decode_equals_prefill(model, first, 30)
    assert torch.equal(seqs1, seqs3)


def causal_mask(q_len, kv_len):
    """transformers' SDPA mask for q_len new tokens after kv_len - q_len cached ones (None where it skips it)."""
    if q_len == 1:
        return None
    return (torch.arange(kv_len)[None, :] <= torch.arange(kv_len - q_len, kv_len)[:, None])[None, None]


def test_hf_decode_state_continues_or_rebuilds():
    # The attention function called directly, as transformers' cache would: each output against moba.attention
    # (prefill) over the whole cache at the last q_len positions, bitwise on the CPU.
    fn = moba.hf.register(BLOCK, 2)
    module = torch.nn.Module()
    module.is_causal = True
    g = torch.Generator().manual_seed(10)
    q_all, k, v = torch.randn(2, 4, 90, 8, generator=g), torch.randn(2, 2, 90, 8, generator=g), torch.randn(
        2, 2, 90, 8, generator=g)
    flat = lambda x: x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])

    def check(L, q_len, k, v, scaling=0.3):
        q = q_all[:, :, L - q_len:L]
        out, _ = fn(module, q, k[:, :, :L], v[:, :, :L], causal_mask(q_len, L), scaling=scaling)
        cu = torch.arange(0, 3 * L, L, dtype=torch.int32)
        want = moba.attention(flat(q_all[:, :, :L]), flat(k[:, :, :L]), flat(v[:, :, :L]), cu, BLOCK, 2,
                              softmax_scale=scaling).view(2, L, 4, 8)[:, L - q_len:]
        assert out.shape == (2, q_len, 4, 8) and torch.equal(out, want), (L, q_len)
        return module._moba_decode

    state = check(40, 1, k, v)                      # first decode: built from 40 tokens
    assert state.held == 40
    assert check(45, 5, k, v) is state              # chunked continuation: 5 appended
    assert check(46, 1, k, v, scaling=0.2) is state and state.held == 46
    swapped = lambda x: x.flip(0)                   # beam reorder: rows exchanged -> rebuilt
    state = check(47, 1, swapped(k), swapped(v))
    assert state.held == 47
    k2, v2 = k.clone(), v.clone()                   # same lengths, other tokens in the last block -> rebuilt
    k2[:, :, 40:47] = torch.randn(2, 2, 7, 8, generator=g)
    assert check(48, 1, swapped(k2), swapped(v2)) is not state
    assert check(30, 1, k, v).held == 30            # shrunk (cropped) cache -> rebuilt
    for L in range(31, 90):                         # past capacity 64 -> rebuilt with room to double
        state = check(L, 1, k, v)
    assert state.held == 89 and state.cache.capacity == 256
    # a prefill starts over
    fn(module, q_all[:, :, :20], k[:, :, :20], v[:, :, :20], None)
    assert module._moba_decode is None


def test_hf_decode_padding_and_missing_backend_fall_back(monkeypatch):
    fn = moba.hf.register(BLOCK, 2)
    module = torch.nn.Module()
    module.is_causal = True
    g = torch.Generator().manual_seed(11)
    q, k, v = torch.randn(2, 4, 1, 8, generator=g), torch.randn(2, 2, 70, 8, generator=g), torch.randn(2, 2, 70, 8,
                                                                                                     generator=g)
    dense = lambda mask: moba.hf._full_attention(q, k, v, mask, 0.3)
    # padding (row 1's first 10 keys masked, bool or additive float): full attention with the mask, no cache
    mask = torch.ones(2, 1, 1, 70, dtype=torch.bool)
    mask[1, :, :, :10] = False
    out, _ = fn(module, q, k, v, mask, scaling=0.3)
    assert torch.equal(out, dense(mask)) and getattr(module, "_moba_decode", None) is None
    additive = torch.zeros(2, 1, 1, 70).masked_fill(~mask, torch.finfo(torch.float32).min)
    out, _ = fn(module, q, k, v, additive, scaling=0.3)
    assert torch.equal(out, dense(additive)) and getattr(module, "_moba_decode", None) is None
    # a mask that hides nothing beyond causal: MoBA decode, which prunes here
    out, _ = fn(module, q, k, v, torch.ones(2, 1, 1, 70, dtype=torch.bool), scaling=0.3)
    assert module._moba_decode is not None and rel_err(out.numpy(), dense(None).numpy()) > 1e-3
    # gradients needed: full attention (the KVCache is not differentiable)
    out, _ = fn(module, q.clone().requires_grad_(), k, v, None, scaling=0.3)
    assert out.requires_grad and rel_err(out.detach().numpy(), dense(None).numpy()) < 1e-6

    # a backend without a decode path (CUDA today): NotImplementedError once, then full attention without trying
    tries = []

    class NoDecode:
        def __init__(self, *args, **kwargs):
            tries.append(1)
            raise NotImplementedError("moba_cache_workspace_size: the CUDA backend has no decode path yet")

    monkeypatch.setattr(moba.hf, "KVCache", NoDecode)
    module = torch.nn.Module()
    for _ in range(3):
        out, _ = fn(module, q, k, v, None, scaling=0.3)
        assert torch.equal(out, dense(None))
    assert len(tries) == 1 and module._moba_decode_unsupported == {"cpu"} and module._moba_decode is None


def test_hf_left_padded_generate_falls_back():
    # Left padding through generate(): the decode steps see a padding mask and use full attention, so with top_k
    # beyond the blocks (prefill = full attention, mask unread) the padded row's tokens still equal SDPA's.
    moba.hf.register(BLOCK, 1000)
    model = tiny_llama().eval()
    ids = torch.randint(1, 97, (2, 40), generator=torch.Generator().manual_seed(12))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :8] = 0
    ids[1, :8] = 0
    out = {}
    for impl in ("sdpa", "moba"):
        model.set_attn_implementation(impl)
        out[impl] = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(out["moba"][0], out["sdpa"][0])
    assert all(getattr(m, "_moba_decode", None) is None for m in attention_modules(model))


def test_hf_static_cache_generate_equals_sdpa():
    # A static cache: the prefill's keys include unfilled slots (no mask: upper-left causal), the decode steps'
    # masks hide the unfilled slots (full attention) until the last; top_k beyond the blocks: SDPA's tokens.
    moba.hf.register(BLOCK, 1000)
    model = tiny_llama().eval()
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(13))
    out = {}
    for impl in ("sdpa", "moba"):
        model.set_attn_implementation(impl)
        out[impl] = model.generate(ids, max_new_tokens=12, do_sample=False, cache_implementation="static",
                                   pad_token_id=0)
    assert torch.equal(out["moba"], out["sdpa"])


def test_hf_chunked_prefill_and_packed_sequences():
    g = torch.Generator().manual_seed(4)
    module = torch.nn.Module()
    module.is_causal = True
    fn = moba.hf.register(BLOCK, 2, decode="full")
    # decode="full": q_len 5 over 20 cached keys with transformers' causal mask is bottom-right full attention
    q, k, v = torch.randn(1, 4, 5, 8, generator=g), torch.randn(1, 2, 20, 8, generator=g), torch.randn(1, 2, 20, 8,
                                                                                                      generator=g)
    out, _ = fn(module, q, k, v, causal_mask(5, 20), scaling=0.25)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kk.transpose(-1, -2)) * 0.25
    s = s.masked_fill(torch.arange(20)[None, :] > torch.arange(15, 20)[:, None], -math.inf)
    want = (s.softmax(-1) @ vv).transpose(1, 2)
    assert out.shape == (1, 5, 4, 8) and rel_err(out.numpy(), want.numpy()) < 1e-5
    fn = moba.hf.register(BLOCK, 2)
    # no mask and q_len 30 < kv_len 40: a prefill into an empty static cache (SDPA's upper-left is_causal), MoBA
    # over the first 30 keys; the 10 unfilled slots hold garbage that must not matter
    q, k, v = torch.randn(2, 4, 30, 8, generator=g), torch.randn(2, 2, 40, 8, generator=g), torch.randn(2, 2, 40, 8,
                                                                                                      generator=g)
    out, _ = fn(module, q, k, v, None, scaling=0.3)
    flat = lambda x: x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])
    want = moba.attention(flat(q), flat(k[:, :, :30]), flat(v[:, :, :30]), torch.tensor([0, 30, 60], dtype=torch.int32),
                          BLOCK, 2, softmax_scale=0.3)
    assert torch.equal(out, want.view(2, 30, 4, 8))
    # batch 1 of packed sequences, with transformers' flash-style cu_seq_lens_q
    q, k, v = torch.randn(1, 4, 60, 8, generator=g), torch.randn(1, 2, 60, 8, generator=g), torch.randn(1, 2, 60, 8,
                                                                                                       generator=g)
    cu = torch.tensor([0, 25, 60], dtype=torch.int32)
    out, _ = fn(module, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    flat = lambda x: x[0].transpose(0, 1).contiguous()
    want = moba.attention(flat(q), flat(k), flat(v), cu, BLOCK, 2, softmax_scale=0.3)
    assert torch.equal(out[0], want)


def test_hf_rejects_dropout_and_noncausal():
    fn = moba.hf.register(BLOCK, 2)
    module = torch.nn.Module()
    module.is_causal = True
    x = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="dropout"):
        fn(module, x, x, x, None, dropout=0.1)
    module.is_causal = False
    with pytest.raises(ValueError, match="causal"):
        fn(module, x, x, x, None)


@pytest.mark.skipif(not torch.cuda.is_available() or not moba.backend_available("cuda"),
                    reason="needs a GPU and libmoba's CUDA backend")
def test_hf_cuda_bf16_full_topk_equals_sdpa():
    # The same tiny Llama on the GPU in bf16: MoBA with top_k beyond the block count against SDPA, forward, then
    # backward where the CUDA backend has one.
    moba.hf.register(BLOCK, 1000)
    ids = torch.randint(0, 97, (2, 64), generator=torch.Generator().manual_seed(5)).cuda()
    results = {}
    for impl in ("sdpa", "moba"):
        model = tiny_llama(hidden_size=256).to("cuda", torch.bfloat16).train()
        model.set_attn_implementation(impl)
        out = model(ids, labels=ids)
        results[impl] = out
    got, want = (results[impl].logits.detach().float().cpu().numpy() for impl in ("moba", "sdpa"))
    assert rel_err(got, want) < 2e-2
    try:
        results["moba"].loss.backward()
    except NotImplementedError as e:
        pytest.skip("forward checked; " + str(e))


@pytest.mark.skipif(not torch.cuda.is_available() or not moba.backend_available("cuda"),
                    reason="needs a GPU and libmoba's CUDA backend")
def test_hf_cuda_decode_steps_equal_prefill():
    # The attention function driven directly on the GPU in bf16 (head_dim 64, GQA 4/2, BLOCK 16, top_k 2: routing
    # prunes), one decode step at a time from 40 to 130 tokens: each step's output against moba.attention
    # (prefill) over the same q, k, v at that position. The inputs are identical, so both route alike (the decode
    # path exactly like the CPU, the forward except on fp32 near-ties) and every row agrees within bf16 tolerance.
    fn = moba.hf.register(BLOCK, 2)
    module = torch.nn.Module()
    module.is_causal = True
    g = torch.Generator().manual_seed(15)
    L_max = 130
    q_all, k, v = (torch.randn(2, h, L_max, 64, generator=g).to("cuda", torch.bfloat16) for h in (4, 2, 2))
    flat = lambda x: x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])
    worst = 0.0
    for L in range(40, L_max + 1):
        q = q_all[:, :, L - 1:L]
        out, _ = fn(module, q, k[:, :, :L], v[:, :, :L], None, scaling=0.125)
        if getattr(module, "_moba_decode_unsupported", set()) == {"cuda"}:
            pytest.skip("this CUDA backend cannot decode (full-attention fallback)")
        cu = torch.arange(0, 3 * L, L, dtype=torch.int32)
        want = moba.attention(flat(q_all[:, :, :L]), flat(k[:, :, :L]), flat(v[:, :, :L]), cu, BLOCK, 2,
                              softmax_scale=0.125).view(2, L, 4, 64)[:, L - 1:]
        assert out.shape == (2, 1, 4, 64)
        got, ref = out.float().cpu().numpy(), want.float().cpu().numpy()
        for b in range(2):
            for h in range(4):
                e = rel_err(got[b, 0, h], ref[b, 0, h])
                worst = max(worst, e)
                assert e < 2e-2, (L, b, h, e)
    assert module._moba_decode is not None and module._moba_decode.held == L_max
    print("decode steps vs prefill (CUDA, bf16): worst row rel_err %.2e" % worst)


@pytest.mark.skipif(not torch.cuda.is_available() or not moba.backend_available("cuda"),
                    reason="needs a GPU and libmoba's CUDA backend")
def test_hf_cuda_generate_decode():
    # Greedy generation on the GPU in bf16 (the CUDA backend's dtypes) with routing that prunes (BLOCK 16, top_k 2,
    # 100 tokens): the decode steps run through each module's CUDA KVCache (or, with a CUDA backend that cannot
    # decode, fall back to full attention once per module), and the steps' logits match one MoBA prefill over
    # the final sequences at those positions, within bf16 tolerance.
    # The median step, not every step: the decode step and the prefill compute q and k by different bf16 GEMMs
    # (one token against 100), and this random model's logits move far more than those roundings: on the CPU,
    # q and k perturbed by 0.2% (bf16's rounding) in the prefill alone gave a whole-run error of 5.1e-2 and single
    # step rows of up to 40% even with full attention (5.5e-2 and 65% with top_k 2, where near-tied blocks may
    # also swap), while the median row stayed at 0.5-1.1e-2. On an H100 (2026-12-08) the whole-run error was
    # 5.0e-2, which the earlier whole-run bound of 2e-2 failed. A broken cache moves every step. The exact
    # comparison of the decode path with the prefill is the test above, on equal inputs.
    moba.hf.register(BLOCK, 2)
    model = tiny_llama(hidden_size=256).to("cuda", torch.bfloat16).eval()
    model.set_attn_implementation("moba")
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(14)).cuda()
    seqs, steps = generate_steps(model, ids, 60)
    fell_back = [getattr(m, "_moba_decode_unsupported", set()) == {"cuda"} for m in attention_modules(model)]
    if not any(fell_back):
        for m in attention_modules(model):
            assert m._moba_decode is not None and m._moba_decode.held == seqs.shape[1] - 1
        with torch.no_grad():
            full = model(seqs).logits
        P = ids.shape[1]
        got, ref = steps.float().cpu().numpy(), full[:, P - 1:P - 1 + 60].float().cpu().numpy()
        assert np.isfinite(got).all()
        errs = sorted(rel_err(got[b, i], ref[b, i]) for b in range(2) for i in range(60))
        close = sum(e < 2e-2 for e in errs)
        print("generate: %d of %d step rows within 2e-2, median %.2e, worst %.2e" % (close, len(errs),
                                                                                  errs[len(errs) // 2], errs[-1]))
        assert errs[len(errs) // 2] < 2e-2, errs
    else:
        assert all(fell_back)


def test_hf_right_padding_is_exact():
    # The prefill reads no mask: with right padding the real tokens' logits still equal SDPA's with the mask.
    moba.hf.register(BLOCK, 1000)
    model = tiny_llama().eval()
    ids = torch.randint(0, 97, (2, 48), generator=torch.Generator().manual_seed(6))
    mask = torch.ones(2, 48, dtype=torch.long)
    mask[1, 30:] = 0
    out = {}
    for impl in ("sdpa", "moba"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            out[impl] = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert rel_err(out["moba"][real].numpy(), out["sdpa"][real].numpy()) < 1e-5
