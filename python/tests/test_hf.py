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


def test_hf_generate_decode_path():
    # Decode steps (q_len 1 over the cache) go through full attention; prefill through MoBA.
    moba.hf.register(BLOCK, 1000)
    model = tiny_llama().eval()
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(3))
    model.set_attn_implementation("moba")
    got = model.generate(ids, max_new_tokens=6, do_sample=False)
    model.set_attn_implementation("sdpa")
    want = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)


def test_hf_chunked_prefill_and_packed_sequences():
    g = torch.Generator().manual_seed(4)
    module = torch.nn.Module()
    module.is_causal = True
    fn = moba.hf.register(BLOCK, 2)
    # q_len 5 over 20 cached keys: bottom-right causal full attention
    q, k, v = torch.randn(1, 4, 5, 8, generator=g), torch.randn(1, 2, 20, 8, generator=g), torch.randn(1, 2, 20, 8,
                                                                                                      generator=g)
    out, _ = fn(module, q, k, v, None, scaling=0.25)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kk.transpose(-1, -2)) * 0.25
    s = s.masked_fill(torch.arange(20)[None, :] > torch.arange(15, 20)[:, None], -math.inf)
    want = (s.softmax(-1) @ vv).transpose(1, 2)
    assert out.shape == (1, 5, 4, 8) and rel_err(out.numpy(), want.numpy()) < 1e-5
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
