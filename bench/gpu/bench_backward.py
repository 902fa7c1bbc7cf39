#!/usr/bin/env python3
"""MoBA CUDA forward+backward vs dense causal SDPA forward+backward, on the same bf16 inputs (one
sequence, d=128, the four sizes of bench_forward.py).

    python3 bench/gpu/bench_backward.py [--lib build/libmoba.so] [--quick] [--only I] [--kinds random,local]

Prints per size and input kind: SDPA fwd+bwd and MoBA fwd+bwd times (median of CUDA event timings;
MoBA's forward includes routing; its backward reads the forward's selection from moba_params.block_idx,
as a training step does), the speedup, MoBA's backward alone and its share, the backward's workspace
and the kept selection relative to q, k, v, o, lse, do, and the same step with the backward routing
again (block_idx NULL), timed in the same run.
Inputs as in bench_forward.py (make_inputs). Needs PyTorch with CUDA and libmoba built with CUDA.
"""
import argparse
import ctypes
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_forward import (D, OP_BACKWARD, TARGETS, ForwardCase, check, load_lib,  # noqa: E402
                           set_heater, sdpa_layout, time_ms, time_pair_ms, workspace_bytes)

TARGETS_FB = [t[:4] + (f,) for t, f in zip(TARGETS, (6.0, 8.0, 1.4, 6.0))]  # the backward issue's targets


def run_case(lib, n, h, block, topk, target, kind, quick, deterministic=False):
    fc = ForwardCase(lib, n, h, block, topk, kind)
    q, k, v, o, lse, p, fwd = fc.q, fc.k, fc.v, fc.o, fc.lse, fc.p, fc.forward
    do = torch.randn(n, h, D, device="cuda", dtype=torch.bfloat16, generator=fc.gen)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    p.deterministic = 1 if deterministic else 0
    bb = workspace_bytes(lib, p, OP_BACKWARD)
    bws = torch.empty(max(bb, 1), device="cuda", dtype=torch.uint8)

    def bwd():
        check(lib, lib.moba_backward(ctypes.byref(p), do.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                     o.data_ptr(), lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                     bws.data_ptr(), bb), "moba_backward")

    sel = torch.empty(h, n, topk, device="cuda", dtype=torch.int32)

    def keep(on):  # the forward's selection kept for the backward, or routed again
        p.block_idx = ctypes.cast(sel.data_ptr(), ctypes.POINTER(ctypes.c_int32)) if on else None

    def moba():
        fwd()
        bwd()

    qd, kd, vd = (sdpa_layout(x).requires_grad_() for x in (q, k, v))
    dod = sdpa_layout(do)

    def dense():
        out = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
        torch.autograd.grad(out, (qd, kd, vd), dod)

    big = n * h >= 1 << 20
    reps = 3 if (quick or big) else 10
    # SDPA and MoBA (the selection kept) timed a b b a (bench_forward.time_pair_ms: a GPU at its power cap
    # runs a call at the clock the one before left it), the other timings after them
    keep(True)
    t_dense, t_moba = time_pair_ms(dense, moba, reps, warmup=1)
    fwd()
    t_bwd = time_ms(bwd, reps, warmup=1)
    keep(False)
    t_moba_re = time_ms(moba, reps, warmup=1)
    t_bwd_re = time_ms(bwd, reps, warmup=1)
    keep(True)
    # dq of the first block's rows (they attend only their own block, like dense) must match dense
    first = min(n, block)
    dqd = torch.autograd.grad(F.scaled_dot_product_attention(qd, kd, vd, is_causal=True), qd, dod)[0][0]
    dqd = dqd.permute(1, 0, 2)[:first].float()
    err = ((dq[:first].float() - dqd).norm() / dqd.norm()).item()
    base = (5 * q.numel()) * 2 + lse.numel() * 4
    return dict(n=n, h=h, B=block, k=topk, kind=kind, t_dense=t_dense, t_moba=t_moba, t_bwd=t_bwd,
                speedup=t_dense / t_moba, target=target, mem=bb / base, err=err, t_moba_re=t_moba_re,
                t_bwd_re=t_bwd_re, sel_mem=sel.numel() * 4 / base)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=os.path.join(os.path.dirname(__file__), "..", "..", "build", "libmoba.so"))
    ap.add_argument("--quick", action="store_true", help="3 repetitions everywhere")
    ap.add_argument("--only", type=int, default=-1, help="run only this target (0..3)")
    ap.add_argument("--kinds", default="random,local", help="inputs, comma-separated: random, local, clustered")
    ap.add_argument("--deterministic", action="store_true", help="the bitwise reproducible backward (separate dq pass)")
    ap.add_argument("--heater", type=int, default=0, help="untimed 8192^3 GEMMs before every timed call (bench_forward.set_heater)")
    args = ap.parse_args()
    lib = load_lib(args.lib)
    set_heater(args.heater)
    mode = "deterministic" if args.deterministic else "default (dq summed in any order)"
    heat = f", {args.heater} heater GEMMs before each timed call" if args.heater else ""
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, d={D}, one sequence, fwd+bwd, "
          f"backward mode: {mode}{heat}")
    rows = []
    for i, (n, h, b, k, tgt) in enumerate(TARGETS_FB):
        if args.only >= 0 and i != args.only:
            continue
        for kind in args.kinds.split(","):
            r = run_case(lib, n, h, b, k, tgt, kind, args.quick, args.deterministic)
            rows.append(r)
            print(f"  done {n} {h} {b} {k} {kind}: {r['speedup']:.2f}x", file=sys.stderr, flush=True)
    hdr = ("N", "H", "B", "top_k", "input", "SDPA f+b ms", "MoBA f+b ms", "speedup", "target", "MoBA bwd ms",
           "bwd share", "bwd workspace", "kept selection", "routing again: f+b ms", "speedup", "bwd ms",
           "dq err(blk0)")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['n'] // 1024}K | {r['h']} | {r['B']} | {r['k']} | {r['kind']} | {r['t_dense']:.2f} | "
              f"{r['t_moba']:.2f} | {r['speedup']:.2f}x | {r['target']:.1f}x | {r['t_bwd']:.2f} | "
              f"{100 * r['t_bwd'] / r['t_moba']:.0f}% | {100 * r['mem']:.1f}% | {100 * r['sel_mem']:.1f}% | "
              f"{r['t_moba_re']:.2f} | {r['t_dense'] / r['t_moba_re']:.2f}x | {r['t_bwd_re']:.2f} | {r['err']:.1e} |")


if __name__ == "__main__":
    main()
