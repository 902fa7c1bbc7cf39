"""Summary of an Nsight Compute source page (bench/gpu/profile_sass.sh): the hottest loop's instruction
mix per iteration and where the warps wait.

    python3 bench/gpu/sass_summary.py sass.csv [--top 15]

First the instructions with the most stall samples and their main reasons. The hottest loop is
taken as the instructions executed as often as the most executed HGMMA (or HMMA); its
opcodes are counted per iteration (executions / that count), which is what to cut when a kernel is
issue-bound."""
import argparse
import collections
import csv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    rows = list(csv.reader(open(args.csv)))
    start = next(i for i, r in enumerate(rows) if r and r[0] == "Address")
    hdr, data = rows[start], [r for r in rows[start + 1:] if len(r) > 5]
    col = {h: i for i, h in enumerate(hdr)}
    samples, execs = col["Warp Stall Sampling (All Samples)"], col["Instructions Executed"]
    stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    num = lambda r, c: int(r[c] or 0)

    def opcode(r):
        t = r[1].strip()
        if t.startswith("@"):
            t = t.split(None, 1)[1]
        return t.split()[0]

    total = sum(num(r, samples) for r in data)
    print(f"the {args.top} instructions with the most stall samples (of {total}): share, executions, top reasons")
    for r in sorted(data, key=lambda r: -num(r, samples))[:args.top]:
        reasons = sorted(((num(r, col[h]), h[6:]) for h in stalls), reverse=True)[:3]
        why = ", ".join(f"{h} {100 * v / max(num(r, samples), 1):.0f}%" for v, h in reasons if v)
        print(f"  {100 * num(r, samples) / max(total, 1):5.1f}% {num(r, execs):>10} {r[1].strip()[:60]:60s} {why}")
    gmma = [num(r, execs) for r in data if opcode(r).startswith(("HGMMA", "HMMA"))]
    if not gmma:
        print("no HGMMA or HMMA in this kernel")
        return
    iters = max(gmma)
    loop = [r for r in data if num(r, execs) == iters]
    in_loop = sum(num(r, samples) for r in loop)
    print(f"hottest loop: {len(loop)} instructions executed {iters} times (per warp); "
          f"{100 * in_loop / max(total, 1):.1f}% of {total} stall samples")
    mix = collections.Counter()
    for r in data:  # every instruction, weighted by how often it runs per loop iteration
        mix[opcode(r)] += num(r, execs) / iters
    print(f"instructions per iteration (whole kernel / iterations): {sum(mix.values()):.0f}")
    for op, v in mix.most_common(args.top):
        print(f"  {op:34s} {v:7.1f}")
    why = collections.Counter()
    for r in loop:
        for h in stalls:
            why[h[6:]] += num(r, col[h])
    print("where the loop's warps are (share of its samples):")
    for h, v in why.most_common(8):
        print(f"  {h:22s} {100 * v / max(in_loop, 1):5.1f}%")


if __name__ == "__main__":
    main()
