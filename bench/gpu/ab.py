#!/usr/bin/env python3
"""A/B of the CUDA backend's switches on the same inputs, in one process: the switches are read per call,
so each set of environment variables is applied in turn, in interleaved rounds (clock and power drift hit
every set alike). Per case and set: the median CUDA-event time of one forward call, the GPU time of each
kernel of one call (torch.profiler), and the output's relative difference from the first set's.

    python3 bench/gpu/ab.py --lib build/libmoba.so --cases 2,3 \
        --sets "MOBA_CUDA_KBM_QREG=0;MOBA_CUDA_KBM_QREG=1" [--kind random] [--rounds 3] [--reps 5]
A set is space-separated NAME=VALUE pairs; sets are separated by ';'. SDPA is timed in every round too."""
import argparse
import os
import statistics

import torch
import torch.nn.functional as F

import bench_forward as bf
from breakdown import kernel_times


def apply(env_set):
    for name in [k for k in os.environ if k.startswith("MOBA_CUDA")]:
        del os.environ[name]
    for pair in env_set.split():
        name, value = pair.split("=", 1)
        os.environ[name] = value


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/libmoba.so")
    ap.add_argument("--cases", default="2,3", help="indices into bench_forward.TARGETS")
    ap.add_argument("--sets", required=True)
    ap.add_argument("--kind", default="random")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    lib = bf.load_lib(args.lib)
    sets = [s.strip() for s in args.sets.split(";")]
    print(f"# {torch.cuda.get_device_name()}, {args.kind} inputs, {args.rounds} rounds x {args.reps} reps")
    for case in (int(c) for c in args.cases.split(",")):
        n, h, block, topk, _ = bf.TARGETS[case]
        fc = bf.ForwardCase(lib, n, h, block, topk, args.kind)
        qd, kd, vd = (bf.sdpa_layout(x) for x in (fc.q, fc.k, fc.v))

        def dense():
            return F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)

        times = {s: [] for s in sets + ["SDPA"]}
        kernels, outs = {}, {}
        for r in range(args.rounds):
            times["SDPA"].append(bf.time_ms(dense, args.reps))
            for s in sets:
                apply(s)
                times[s].append(bf.time_ms(fc.forward, args.reps))
                if r == 0:
                    fc.o.fill_(float("nan"))
                    kernels[s] = {k: t / 1000 for k, (_, t) in kernel_times(fc.forward).items()}
                    outs[s] = fc.o.float().clone()
        apply("")
        ref = outs[sets[0]]
        print(f"## {n // 1024}K H{h} B{block} top_k {topk}: SDPA {statistics.median(times['SDPA']):.3f} ms")
        for s in sets:
            t = statistics.median(times[s])
            diff = ((outs[s] - ref).norm() / ref.norm()).item()
            ks = ", ".join(f"{k} {v:.3f}" for k, v in sorted(kernels[s].items(), key=lambda x: -x[1])[:4])
            print(f"  [{s or 'default'}] call {t:.3f} ms (rounds {', '.join(f'{x:.2f}' for x in times[s])}), "
                  f"vs SDPA {statistics.median(times['SDPA']) / t:.3f}x, diff vs first {diff:.1e}; "
                  f"kernels: {ks}")


if __name__ == "__main__":
    main()
