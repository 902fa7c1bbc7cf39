#!/usr/bin/env python3
"""MoBA CUDA forward vs dense causal SDPA, in one run, on the same bf16 inputs (one sequence, d=128).

    python3 bench/gpu/bench_forward.py [--lib build/libmoba.so] [--quick]

For each target size and for three kinds of input (random; 'local' = queries of one 256-token
neighbourhood share a direction plus a little noise, so they mostly route alike; 'clustered':
without the noise, so they route exactly alike) prints: dense and MoBA times (median of CUDA
event timings, MoBA including routing), the speedup dense/MoBA, MoBA's effective TFLOP/s (useful
FLOPs: 4*d per (query, attended key) from the selection it made), the routing share of MoBA's time,
and the extra device memory (workspace) over what dense flash attention needs (q, k, v, o, lse); and the
same call with only the query-tile-major kernel (MOBA_CUDA_KBM=0: the previous version) side by side, with
the relative difference of the two outputs.
Needs PyTorch with CUDA and libmoba built with CUDA. The ctypes glue below is the minimum needed.
"""
import argparse
import ctypes
import os
import statistics
import sys

import torch
import torch.nn.functional as F

TARGETS = [  # (tokens, heads, block, top_k, target speedup)
    (32 * 1024, 16, 512, 3, 8.0),
    (64 * 1024, 8, 128, 16, 10.0),
    (128 * 1024, 8, 4096, 12, 1.5),
    (1024 * 1024, 1, 4096, 12, 8.0),
]
D = 128
CUDA, BF16, OP_FORWARD, OP_BACKWARD, OP_ROUTE = 1, 2, 0, 1, 2


class Params(ctypes.Structure):  # moba_params, include/moba.h
    _fields_ = [("backend", ctypes.c_int), ("cuda_stream", ctypes.c_void_p), ("num_threads", ctypes.c_int),
                ("dtype", ctypes.c_int), ("num_seqs", ctypes.c_int), ("total_tokens", ctypes.c_int64),
                ("cu_seqlens", ctypes.POINTER(ctypes.c_int32)), ("num_q_heads", ctypes.c_int),
                ("num_kv_heads", ctypes.c_int), ("head_dim", ctypes.c_int), ("block_size", ctypes.c_int),
                ("top_k", ctypes.c_int), ("softmax_scale", ctypes.c_float), ("deterministic", ctypes.c_int),
                ("block_idx", ctypes.POINTER(ctypes.c_int32))]  # a library before 0.2 ignores this last field


def load_lib(path):
    lib = ctypes.CDLL(path)
    lib.moba_params_init.argtypes = [ctypes.POINTER(Params)]
    lib.moba_last_error.restype = ctypes.c_char_p
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    lib.moba_workspace_size.argtypes = [ctypes.POINTER(Params), ctypes.c_int, ctypes.POINTER(sz)]
    lib.moba_forward.argtypes = [ctypes.POINTER(Params), vp, vp, vp, vp, vp, vp, sz]
    lib.moba_route.argtypes = [ctypes.POINTER(Params), vp, vp, vp, vp, sz]
    lib.moba_backward.argtypes = [ctypes.POINTER(Params)] + [vp] * 10 + [sz]
    return lib


def check(lib, status, what):
    if status != 0:
        raise RuntimeError(f"{what}: status {status}: {lib.moba_last_error().decode()}")


_heater = None  # set_heater: work queued, untimed, before every timed call


def set_heater(gemms):
    """--heater N: before every timed call, N untimed bf16 GEMMs of 8192^3 (1.1 TFLOP, ~1.7 ms each on an
    H100) in the same stream, so that every call - dense or MoBA - starts right after the same kind of work,
    as attention does inside a model (after the q/k/v projections). Under a power cap a call runs at the
    clock the work before it left; without a heater that work is the previous timed call (docs/benchmarks.md)."""
    global _heater
    if gemms <= 0:
        _heater = None
        return
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)

    def heat():
        for _ in range(gemms):
            torch.matmul(x, x, out=y)
    _heater = heat


def event_ms(fn):
    """One call of fn, timed by CUDA events around it (after the heater's untimed work, if set)."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if _heater:
        _heater()
    a.record()
    fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b)


def time_ms(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    return statistics.median(event_ms(fn) for _ in range(reps))


def time_pair_ms(fa, fb, reps, warmup=2):
    """Medians of fa and fb timed in the order a b b a a b b a ... (at least 4 each), so that each follows
    itself and the other equally often: a GPU at its power cap runs a call at the clock the call before
    left it, and a series of one then the other (or plain alternation, where b always follows a) hands
    one side the other's heat."""
    for _ in range(warmup):
        fa(), fb()
    ta, tb = [], []
    for r in range(max(reps, 4)):
        for fn, times in ((fa, ta), (fb, tb)) if r % 2 == 0 else ((fb, tb), (fa, ta)):
            times.append(event_ms(fn))
    return statistics.median(ta), statistics.median(tb)


def make_inputs(n, h, kind, gen):
    q = torch.randn(n, h, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(n, h, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(n, h, D, device="cuda", dtype=torch.bfloat16, generator=gen)
    if kind in ("local", "clustered"):  # one random direction per (256-token neighbourhood, head) dominates q
        groups = (n + 255) // 256
        u = torch.randn(groups, h, D, device="cuda", generator=gen)
        u = u / u.norm(dim=-1, keepdim=True)
        noise = 0.05 if kind == "local" else 0.0  # clustered: a neighbourhood routes exactly alike
        q = (4.0 * u.repeat_interleave(256, dim=0)[:n] + noise * q.float()).to(torch.bfloat16)
    return q.contiguous(), k, v


def make_params(lib, n, h, block, topk):
    """The call's params (bf16, one sequence of n tokens, h heads, d = D) on the current stream, and the
    cu_seqlens array they point to (keep it alive as long as the params)."""
    cu = (ctypes.c_int32 * 2)(0, n)
    p = Params()
    lib.moba_params_init(ctypes.byref(p))
    p.backend, p.dtype, p.num_seqs, p.total_tokens, p.cu_seqlens = CUDA, BF16, 1, n, cu
    p.num_q_heads = p.num_kv_heads = h
    p.head_dim, p.block_size, p.top_k = D, block, topk
    p.cuda_stream = torch.cuda.current_stream().cuda_stream
    return p, cu


def workspace_bytes(lib, p, op):
    size = ctypes.c_size_t()
    check(lib, lib.moba_workspace_size(ctypes.byref(p), op, ctypes.byref(size)), "workspace")
    return size.value


def sdpa_layout(x):
    """[tokens, heads, d] -> SDPA's [1, heads, tokens, d]."""
    return x.permute(1, 0, 2).unsqueeze(0).contiguous()


class ForwardCase:
    """What every GPU bench script sets up for one case: inputs of the given kind from a generator seeded
    by the shape (gen goes on from there, e.g. for do), o and lse, the params, the forward's workspace,
    and forward(), one moba_forward call."""

    def __init__(self, lib, n, h, block, topk, kind):
        self.lib = lib
        self.gen = torch.Generator(device="cuda").manual_seed(n + h + block + topk)
        self.q, self.k, self.v = make_inputs(n, h, kind, self.gen)
        self.o = torch.empty_like(self.q)
        self.lse = torch.empty(h, n, device="cuda", dtype=torch.float32)
        self.p, self.cu = make_params(lib, n, h, block, topk)
        self.ws_bytes = workspace_bytes(lib, self.p, OP_FORWARD)
        self.ws = torch.empty(max(self.ws_bytes, 1), device="cuda", dtype=torch.uint8)

    def forward(self):
        check(self.lib, self.lib.moba_forward(ctypes.byref(self.p), self.q.data_ptr(), self.k.data_ptr(),
                                              self.v.data_ptr(), self.o.data_ptr(), self.lse.data_ptr(),
                                              self.ws.data_ptr(), self.ws_bytes), "moba_forward")


def run_case(lib, n, h, block, topk, target, kind, quick):
    fc = ForwardCase(lib, n, h, block, topk, kind)
    q, o, lse, p, moba = fc.q, fc.o, fc.lse, fc.p, fc.forward
    rt_bytes = workspace_bytes(lib, p, OP_ROUTE)
    rws = torch.empty(max(rt_bytes, 1), device="cuda", dtype=torch.uint8)
    sel = torch.empty(h, n, topk, device="cuda", dtype=torch.int32)

    def route():
        check(lib, lib.moba_route(ctypes.byref(p), q.data_ptr(), fc.k.data_ptr(), sel.data_ptr(), rws.data_ptr(),
                                  rt_bytes), "moba_route")

    qd, kd, vd = (sdpa_layout(x) for x in (q, fc.k, fc.v))

    def dense():
        return F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)

    big = n * h >= 1 << 20
    reps = 3 if (quick or big) else 10
    t_dense, t_moba = time_pair_ms(dense, moba, reps)
    o_moba = o.clone()
    t_route = time_ms(route, reps)
    # the query-tile-major kernel alone (MOBA_CUDA_KBM=0, read per call): the previous version, after the
    # main pair (it is up to 15x slower: timed before MoBA, it heated the GPU for MoBA's calls)
    os.environ["MOBA_CUDA_KBM"] = "0"
    t_qtm = time_ms(moba, reps)
    del os.environ["MOBA_CUDA_KBM"]
    diff = ((o_moba.float() - o.float()).norm() / o.float().norm()).item()
    o = o_moba

    # useful FLOPs from the selection: each selected history block gives B keys, the own block pos % B + 1
    route()
    pos = torch.arange(n, device="cuda", dtype=torch.int64)
    own = pos // block
    s64 = sel.to(torch.int64)
    keys = torch.where(s64 < 0, 0, torch.where(s64 == own.view(1, n, 1), (pos % block + 1).view(1, n, 1), block))
    useful = 4.0 * D * keys.sum().item()
    # blocks a 128-row query tile visits (the union of its rows' selections), against top_k: the
    # query-tile-major kernels' wasted work on inputs whose neighbouring queries route differently
    rows = 128
    tiles = s64[:, : n // rows * rows].reshape(h, n // rows, rows * topk).sort(dim=-1).values
    distinct = (tiles[..., 1:] != tiles[..., :-1]).sum(-1) + 1 - (tiles[..., 0] < 0).long()
    union = distinct.float().mean().item() / min(topk, n // block)
    dense_flops = 4.0 * D * h * n * (n + 1) / 2
    # o of the rows that attend everything must match dense; a cheap sanity check on the first block
    first = min(n, block)
    od = dense()[0].permute(1, 0, 2)
    err = ((o[:first].float() - od[:first].float()).norm() / od[:first].float().norm()).item()
    dense_mem = 4 * q.numel() * 2 + lse.numel() * 4
    return dict(n=n, h=h, B=block, k=topk, kind=kind, t_dense=t_dense, t_moba=t_moba, t_route=t_route,
                speedup=t_dense / t_moba, target=target, tf_moba=useful / t_moba / 1e9,
                tf_dense=dense_flops / t_dense / 1e9, ideal=dense_flops / useful, mem=fc.ws_bytes / dense_mem,
                err=err, union=union, t_qtm=t_qtm, diff=diff)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.path.join(os.path.dirname(__file__), "..", "..", "build", "libmoba.so"))
    ap.add_argument("--quick", action="store_true", help="3 repetitions everywhere")
    ap.add_argument("--only", type=int, default=-1, help="run only this target (0..3)")
    ap.add_argument("--kinds", default="random,local,clustered",
                    help="inputs, comma-separated: random, local, clustered")
    ap.add_argument("--heater", type=int, default=0, help="untimed 8192^3 GEMMs before every timed call (set_heater)")
    args = ap.parse_args()
    lib = load_lib(args.lib)
    set_heater(args.heater)
    heat = f", {args.heater} heater GEMMs before each timed call" if args.heater else ""
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, d={D}, one sequence{heat}")
    rows = []
    for i, (n, h, b, k, tgt) in enumerate(TARGETS):
        if args.only >= 0 and i != args.only:
            continue
        for kind in args.kinds.split(","):
            r = run_case(lib, n, h, b, k, tgt, kind, args.quick)
            rows.append(r)
            print(f"  done {n} {h} {b} {k} {kind}: {r['speedup']:.2f}x", file=sys.stderr, flush=True)
    hdr = ("N", "H", "B", "top_k", "input", "dense ms", "MoBA ms", "speedup", "target", "ideal", "MoBA TF/s",
           "dense TF/s", "route %", "extra mem", "union/top_k", "err(blk0)", "QTM-only ms", "vs QTM", "diff vs QTM")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['n'] // 1024}K | {r['h']} | {r['B']} | {r['k']} | {r['kind']} | {r['t_dense']:.2f} | "
              f"{r['t_moba']:.2f} | {r['speedup']:.2f}x | {r['target']:.1f}x | {r['ideal']:.1f}x | "
              f"{r['tf_moba']:.0f} | {r['tf_dense']:.0f} | {100 * r['t_route'] / r['t_moba']:.1f} | "
              f"{100 * r['mem']:.1f}% | {r['union']:.2f} | {r['err']:.1e} | {r['t_qtm']:.2f} | "
              f"{r['t_qtm'] / r['t_moba']:.2f}x | {r['diff']:.1e} |")


if __name__ == "__main__":
    main()
