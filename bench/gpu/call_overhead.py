"""How much of a MoBA forward call's measured time is the host's: for bench_forward.py's cases,
the median CUDA-event time of one call timed alone (the benchmark's way: the GPU idles while the
host plans the call), of calls timed back to back (the host's planning hidden under the previous
call's GPU work, as in a training loop), the host time to enqueue one call, and the same for SDPA.

    python3 bench/gpu/call_overhead.py --lib build/libmoba.so [--case 2] [--kind random] [--reps 10]"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import bench_forward as bf


def event_ms(fn, calls, reps):
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times)


def host_ms(fn, reps):
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default="build/libmoba.so")
    ap.add_argument("--case", type=int, default=2)
    ap.add_argument("--kind", default="random")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    lib = bf.load_lib(args.lib)
    n, h, block, topk, _ = bf.TARGETS[args.case]
    fc = bf.ForwardCase(lib, n, h, block, topk, args.kind)
    moba = fc.forward
    qd, kd, vd = (bf.sdpa_layout(x) for x in (fc.q, fc.k, fc.v))

    def dense():
        return F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)

    for fn in (moba, dense, moba, dense):  # warm-up
        fn()
    torch.cuda.synchronize()
    name = f"{n // 1024}K H{h} B{block} top_k {topk} {args.kind}"
    for label, fn in (("MoBA", moba), ("SDPA", dense)):
        alone = event_ms(fn, 1, args.reps)
        batched = event_ms(fn, 5, max(3, args.reps // 3))
        enqueue = host_ms(fn, args.reps)
        print(f"{name} {label}: alone {alone:.3f} ms, back to back {batched:.3f} ms/call, "
              f"host enqueue {enqueue:.3f} ms")


if __name__ == "__main__":
    main()
