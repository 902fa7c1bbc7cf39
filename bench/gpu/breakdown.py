#!/usr/bin/env python3
"""Where one MoBA CUDA forward (or backward) spends its time: per-kernel GPU time of one call
(torch.profiler/CUPTI sees libmoba's launches too), for bench_forward.py's cases.

    python3 bench/gpu/breakdown.py --lib build/libmoba.so --case 1 --kind random [--op backward]
Environment switches (MOBA_CUDA_KBM, MOBA_CUDA_KBM_RATIO, MOBA_CUDA_KBM_PAIRS) apply as usual.
"""
import argparse
import ctypes
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(__file__))
import bench_forward as bf  # noqa: E402


def kernel_times(fn):
    """GPU time of each kernel of one call of fn, after a warm-up call (torch.profiler / CUPTI):
    {kernel name: (launches, microseconds)}."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            name = e.name.split("<")[0].split("(")[0][:40]
            c, t = rows.get(name, (0, 0.0))
            rows[name] = (c + 1, t + e.device_time)
    return rows


def backward_call(lib, fc, do=None, grads=None):
    """One MoBA backward call on fc's inputs, the forward's o and lse (run once here) and dO (random
    unless given): (the call, its workspace bytes, (dq, dk, dv) it writes, dO)."""
    q, k, v, o, lse, p = fc.q, fc.k, fc.v, fc.o, fc.lse, fc.p
    n, h = q.shape[0], q.shape[1]
    fc.forward()
    if do is None:
        do = torch.randn(n, h, bf.D, device="cuda", dtype=torch.bfloat16, generator=fc.gen)
    dq, dk, dv = grads if grads else (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
    ws = bf.workspace_bytes(lib, p, bf.OP_BACKWARD)
    bws = torch.empty(max(ws, 1), device="cuda", dtype=torch.uint8)

    def call():
        bf.check(lib, lib.moba_backward(ctypes.byref(p), do.data_ptr(), q.data_ptr(), k.data_ptr(),
                                        v.data_ptr(), o.data_ptr(), lse.data_ptr(), dq.data_ptr(),
                                        dk.data_ptr(), dv.data_ptr(), bws.data_ptr(), ws),
                 "moba_backward")
    return call, ws, (dq, dk, dv), do


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/libmoba.so")
    ap.add_argument("--case", type=int, default=0, help="index into bench_forward.TARGETS")
    ap.add_argument("--kind", default="random")
    ap.add_argument("--op", default="forward", choices=("forward", "backward"))
    args = ap.parse_args()
    lib = bf.load_lib(args.lib)
    n, h, block, topk, _ = bf.TARGETS[args.case]
    fc = bf.ForwardCase(lib, n, h, block, topk, args.kind)

    if args.op == "forward":
        moba, ws_shown = fc.forward, fc.ws_bytes
    else:  # profile the backward alone, on the forward's o and lse
        moba, ws_shown, _, _ = backward_call(lib, fc)

    rows = kernel_times(moba)
    total = sum(t for _, t in rows.values())
    env = " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MOBA_CUDA"))
    print(f"## {args.op} {n // 1024}K H{h} B{block} top_k {topk} {args.kind} {env}: workspace {ws_shown / 2**20:.0f} MiB,"
          f" GPU kernel time {total / 1000:.3f} ms")
    for name, (c, t) in sorted(rows.items(), key=lambda x: -x[1][1]):
        print(f"  {name:40s} {c:5d} launches {t / 1000:8.3f} ms {100 * t / total:5.1f}%")


if __name__ == "__main__":
    main()
