#!/usr/bin/env python3
"""A/B of the CUDA backend's switches on the same inputs, in one process: the switches are read per call,
so each set of environment variables is applied in turn, in interleaved rounds whose order rotates (clock
and power drift hit every set alike). Per case and set: the median CUDA-event time of one forward call
(--op backward: one backward call, on the forward's o and lse), the GPU time of each kernel of one call
after the timing (torch.profiler), and the output's (dq, dk, dv's) relative difference from the first set's.

    python3 bench/gpu/ab.py --lib build/libmoba.so --cases 2,3 \
        --sets "MOBA_CUDA_KBM_QREG=0;MOBA_CUDA_KBM_QREG=1" [--kind random,local] [--rounds 3] [--reps 5] [--op backward]
A set is space-separated NAME=VALUE pairs; sets are separated by ';'. SDPA is timed in every round too
(--op backward: SDPA's backward alone, autograd on a kept forward graph). LIB=path in a set runs that
set on another build of the library (e.g. the previous commit's, tests/gpu/prebuild_base.sh): the
previous version side by side, on the same inputs."""
import argparse
import os
import statistics

import torch
import torch.nn.functional as F

import bench_forward as bf
from breakdown import backward_call, kernel_times


def apply(env_set):
    for name in [k for k in os.environ if k.startswith("MOBA_CUDA")]:
        del os.environ[name]
    for pair in env_set.split():
        name, value = pair.split("=", 1)
        if name != "LIB":
            os.environ[name] = value


def lib_path(env_set, default):
    """The library a set runs on: its LIB=path, else --lib."""
    paths = [pair[4:] for pair in env_set.split() if pair.startswith("LIB=")]
    return paths[-1] if paths else default


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/libmoba.so")
    ap.add_argument("--cases", default="2,3", help="indices into bench_forward.TARGETS")
    ap.add_argument("--sets", required=True)
    ap.add_argument("--kind", default="random", help="inputs, comma-separated: random, local, clustered")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--op", default="forward", choices=("forward", "backward"))
    ap.add_argument("--top", type=int, default=4, help="kernels listed per set (longest first)")
    args = ap.parse_args()
    lib = bf.load_lib(args.lib)
    sets = [s.strip() for s in args.sets.split(";")]
    libs = {path: bf.load_lib(path) for path in {lib_path(s, args.lib) for s in sets}}  # ctypes: RTLD_LOCAL
    set_lib = {s: libs[lib_path(s, args.lib)] for s in sets}
    print(f"# {torch.cuda.get_device_name()}, {args.kind} inputs, {args.rounds} rounds x {args.reps} reps, "
          "the sets' order rotated each round")
    for case, kind in ((int(c), k) for c in args.cases.split(",") for k in args.kind.split(",")):
        n, h, block, topk, _ = bf.TARGETS[case]
        fc = bf.ForwardCase(lib, n, h, block, topk, kind)
        # the forward's workspace: the most any set asks for (a switch or another build may need more)
        need = 0
        for s in sets:
            apply(s)
            need = max(need, bf.workspace_bytes(set_lib[s], fc.p, bf.OP_FORWARD))
        if need > fc.ws_bytes:
            fc.ws_bytes = need
            fc.ws = torch.empty(need, device="cuda", dtype=torch.uint8)
        qd, kd, vd = (bf.sdpa_layout(x) for x in (fc.q, fc.k, fc.v))
        if args.op == "forward":
            def dense():
                return F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
            calls = {s: fc.forward for s in sets}
            outputs = (fc.o,)
        else:
            qg, kg, vg = (x.detach().requires_grad_() for x in (qd, kd, vd))
            od = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True)
            dod = torch.randn_like(od)

            def dense():
                return torch.autograd.grad(od, (qg, kg, vg), dod, retain_graph=True)
            # one dO and one set of outputs for every set: each library gets a call on the same buffers
            do, outputs, calls = None, None, {}
            for s in sets:
                fc.lib = set_lib[s]
                calls[s], _, outputs, do = backward_call(set_lib[s], fc, do, outputs)

        def use(s):
            apply(s)
            fc.lib = set_lib[s]
            if args.op == "backward":
                fc.forward()  # o and lse of this set's forward

        # The sets' order rotates from round to round, so that no set always runs in the same place: with a
        # fixed order the second of two sets measured 2-4% slower at 128K and 1M with the same kernel code
        # (2026-12-07; plausibly the power cap, which a long call reaches).
        times = {s: [] for s in sets + ["SDPA"]}
        for r in range(args.rounds):
            times["SDPA"].append(bf.time_ms(dense, args.reps))
            for s in sets[r % len(sets):] + sets[:r % len(sets)]:
                use(s)
                times[s].append(bf.time_ms(calls[s], args.reps))
        kernels, outs = {}, {}  # after the timing, so the profiler's pauses do not shift it
        for s in sets:
            use(s)
            for x in outputs:
                x.fill_(float("nan"))
            kernels[s] = {k: t / 1000 for k, (_, t) in kernel_times(calls[s]).items()}
            outs[s] = [x.float().clone() for x in outputs]
        apply("")
        ref = outs[sets[0]]
        print(f"## {args.op} {n // 1024}K H{h} B{block} top_k {topk} {kind}: SDPA {statistics.median(times['SDPA']):.3f} ms")
        for s in sets:
            t = statistics.median(times[s])
            diff = max(((x - y).norm() / y.norm()).item() for x, y in zip(outs[s], ref))
            ks = ", ".join(f"{k} {v:.3f}" for k, v in sorted(kernels[s].items(), key=lambda x: -x[1])[:args.top])
            print(f"  [{s or 'default'}] call {t:.3f} ms (rounds {', '.join(f'{x:.2f}' for x in times[s])}), "
                  f"vs SDPA {statistics.median(times['SDPA']) / t:.3f}x, diff vs first {diff:.1e}; "
                  f"kernels (sum {sum(kernels[s].values()):.3f}): {ks}")


if __name__ == "__main__":
    main()
