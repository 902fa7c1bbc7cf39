#!/bin/bash
# Nsight Compute per-instruction view of one launch (device machine; build/ from tests/gpu/device_run.sh):
# warp-stall samples and executed counts per SASS instruction, for bench/gpu/sass_summary.py.
#   bash bench/gpu/profile_sass.sh CASE_INDEX KERNEL_REGEX [SKIP]   e.g. 2 kbm_attend_ws
# OP=backward profiles a kernel of the backward call instead (breakdown.py --op backward: one warm-up
# call, then the profiled one; SKIP 1 takes the second launch), e.g. OP=backward ... 2 dkdv_ws 1
# Writes $OUT/sass.tar.gz: sass.csv (source page), sass_details.txt (stall totals), sass_run.txt (the
# driver's output) - one file: the device tool brings back at most 8 files per call; the report
# itself (sass.ncu-rep) stays in /tmp/moba-prof on the device machine.
set -u
OUT=${OUT:-/tmp/moba-out}
P=/tmp/moba-prof
mkdir -p "$P"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
cd /tmp/moba-src
$NCU --clock-control none -k "regex:${2:-kbm_attend_ws}" -s "${3:-3}" -c 1 --section SourceCounters \
  --section WarpStateStats --section SpeedOfLight -f -o "$P/sass" \
  $(if [ "${OP:-forward}" = backward ]; then
      echo python3 bench/gpu/breakdown.py --lib build/libmoba.so --op backward --kind "${KINDS:-random}" --case "${1:-2}"
    else
      echo python3 bench/gpu/bench_forward.py --lib build/libmoba.so --quick --kinds "${KINDS:-random}" --only "${1:-2}"
    fi) > "$P/sass_run.txt" 2>&1
echo "ncu rc=$?"
$NCU -i "$P/sass.ncu-rep" --page source --csv --print-source sass > "$P/sass.csv" 2>&1
$NCU -i "$P/sass.ncu-rep" --page details --print-details all > "$P/sass_details.txt" 2>&1
tar -C "$P" -czf "$OUT/sass.tar.gz" sass.csv sass_details.txt sass_run.txt
python3 bench/gpu/sass_summary.py "$P/sass.csv" | head -60
