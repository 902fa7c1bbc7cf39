"""Training smoke test: a small causal transformer whose attention is libmoba, next to the same model with dense
attention, on synthetic long-range associative recall. Prints both loss curves and the final numbers.

Task: each sequence starts with P (key, value) pairs, then filler tokens, then the same keys again in a random
order, each to be followed by its value: recall at a distance of about L - 2P tokens. Loss and accuracy are
measured on the recalled values only (chance: log(V) nats, 1/V accuracy).

    python3 bench/gpu/train_smoke.py --lib build/libmoba.so [--steps 300] [--seq 2048] [--block 128] [--top-k 4]
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))


def make_batch(gen, batch, seq, pairs, n_keys, n_vals, device):
    """Tokens [batch, seq] and the positions whose next token is a recalled value (mask [batch, seq])."""
    filler0, key0, val0 = 0, 16, 16 + n_keys  # 16 filler tokens, then keys, then values
    toks = torch.randint(filler0, 16, (batch, seq), generator=gen)
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    for b in range(batch):
        keys = torch.randperm(n_keys, generator=gen)[:pairs]
        vals = torch.randint(0, n_vals, (pairs,), generator=gen)
        toks[b, 0:2 * pairs:2] = key0 + keys
        toks[b, 1:2 * pairs:2] = val0 + vals
        order = torch.randperm(pairs, generator=gen)
        start = seq - 2 * pairs
        toks[b, start::2] = key0 + keys[order]
        toks[b, start + 1::2] = val0 + vals[order]
        mask[b, start:seq - 1:2] = True  # at a recalled key, predict its value
    return toks.to(device), mask.to(device)


class Block(torch.nn.Module):
    def __init__(self, dim, heads, attend):
        super().__init__()
        self.heads, self.attend = heads, attend
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):  # x [batch, seq, dim]
        b, n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, dim // self.heads).unbind(2)
        x = x + self.proj(self.attend(q, k, v).reshape(b, n, dim))
        return x + self.mlp(self.norm2(x))


class Model(torch.nn.Module):
    def __init__(self, vocab, seq, dim, heads, layers, attend):
        super().__init__()
        self.emb, self.pos = torch.nn.Embedding(vocab, dim), torch.nn.Embedding(seq, dim)
        self.blocks = torch.nn.ModuleList(Block(dim, heads, attend) for _ in range(layers))
        self.out = torch.nn.Linear(dim, vocab)

    def forward(self, toks):
        x = self.emb(toks) + self.pos(torch.arange(toks.shape[1], device=toks.device))
        for blk in self.blocks:
            x = blk(x)
        return self.out(x)


def dense_attention(q, k, v):  # [b, n, h, d] -> [b, n, h, d], causal, bf16 like MoBA's inputs
    q, k, v = (t.transpose(1, 2).to(torch.bfloat16) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).float()


def moba_attention(block, top_k):
    import moba

    def attend(q, k, v):
        b, n, h, d = q.shape
        cu = torch.arange(0, (b + 1) * n, n, dtype=torch.int32)  # each row one sequence, on the host
        flat = [t.reshape(b * n, h, d).to(torch.bfloat16) for t in (q, k, v)]
        return moba.attention(*flat, cu, block, top_k).view(b, n, h, d).float()
    return attend


def train(name, attend, args, device):
    torch.manual_seed(0)
    model = Model(16 + args.keys + args.vals, args.seq, args.dim, args.heads, args.layers, attend).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))  # 100 warm-up steps
    gen = torch.Generator().manual_seed(1)  # the same data for both models
    curve, t0 = [], time.time()
    for step in range(args.steps):
        toks, mask = make_batch(gen, args.batch, args.seq, args.pairs, args.keys, args.vals, device)
        logits = model(toks)[:, :-1]
        target, m = toks[:, 1:], mask[:, :-1]
        loss = F.cross_entropy(logits[m], target[m])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        acc = (logits[m].argmax(-1) == target[m]).float().mean().item()
        curve.append((loss.item(), acc))
        if step % 100 == 0 or step == args.steps - 1:
            print("%-5s step %4d  recall loss %.3f  accuracy %.3f  (%.1f s)" % (name, step, loss.item(), acc,
                                                                              time.time() - t0), flush=True)
    tail = curve[-20:]
    return sum(c[0] for c in tail) / len(tail), sum(c[1] for c in tail) / len(tail), curve


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", help="path to libmoba.so (else MOBA_LIBRARY or the package's)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--keys", type=int, default=64)
    ap.add_argument("--vals", type=int, default=32)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    if args.lib:
        os.environ["MOBA_LIBRARY"] = args.lib
    device = "cuda"
    print("task: %d pairs, recall ~%d tokens later; seq %d, batch %d; model %d layers, dim %d, %d heads; "
          "MoBA block %d top_k %d; chance loss %.3f" % (args.pairs, args.seq - 2 * args.pairs, args.seq, args.batch,
                                                         args.layers, args.dim, args.heads, args.block, args.top_k,
                                                         math.log(args.vals)))
    results = {"dense": train("dense", dense_attention, args, device),
               "moba": train("moba", moba_attention(args.block, args.top_k), args, device)}
    print("\nfinal (mean of the last 20 steps):")
    for name, (loss, acc, curve) in results.items():
        print("  %-5s recall loss %.3f (first step %.3f)  accuracy %.3f" % (name, loss, curve[0][0], acc))
    print("  MoBA - dense loss: %+.3f" % (results["moba"][0] - results["dense"][0]))


if __name__ == "__main__":
    main()
