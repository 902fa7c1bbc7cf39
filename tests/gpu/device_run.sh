#!/bin/bash
# One call on the GPU machine: build a copy of this tree, then the phases named in the arguments
# (default: test sanitize bench):
#   test      tests/gpu: test_cuda_forward (every dim x dtype x varlen x GQA x block size) and
#             test_cuda_golden on .golden/ (a copy of ../shared/golden's bf16 case; carry it)
#   sanitize  compute-sanitizer memcheck and racecheck on the quick subset (MOBA_GPU_TEST_QUICK=1)
#   (test runs the default dispatch; that with MOBA_CUDA_KBM_PAIRS=1 = the smallest passes (some tiles handed
#   off, some not: passes the device cuts from a mixed list, empty ones among them); MOBA_CUDA_NO_WGMMA=1 =
#   portable kernel only; MOBA_CUDA_ROUTE_SORT=0 = routing's first chunk by insertions, not a sorting network;
#   MOBA_CUDA_KBM_DECIDE=0 = the hand-off decided inside the query-tile-major kernel, not ahead of it;
#   MOBA_CUDA_KBM_UNION=0 = the tiles not handed off done by the query-tile-major kernel, not as union tiles of
#   the warp-specialised kernel (the default since v24); MOBA_CUDA_KBM_RATIO=6 (more and larger unions stay) in 1-unit passes;
#   MOBA_CUDA_ROUTE_ROWTHR=0 = routing's scan against each
#   half-row's threshold, not the row's (the default since v26), also with the first chunk by insertions;
#   MOBA_CUDA_KBM_FORK=0 = the passes on the caller's stream, not a second one beside the union tiles (the
#   default since v27), also with RATIO=6 in 1-unit passes; MOBA_CUDA_ROUTE_FIRST32=0 = routing's first chunk
#   sorted by 64-bit keys only, not by 32-bit keys where their order is exact (the default since v28);
#   MOBA_CUDA_KBM=1 = every routed tile key-block-major, that with MOBA_CUDA_KBM_PAIRS=1,
#   and both with MOBA_CUDA_KBM_WS=1 = the warp-specialised key-block-major kernel (the default for B >= 128;
#   K/V by TMA in 128-key stages where B >= 1024 is a multiple of 128), that with its variants:
#   MOBA_CUDA_KBM_TMA=0 (cp.async), =1 (TMA, 64-key stages), MOBA_CUDA_KBM_STAGES=5 (two Q buffers, five
#   stages), MOBA_CUDA_KBM_QREG=0 (Q from shared memory), MOBA_CUDA_KBM_PP=1 (ping-pong consumers); sanitize:
#   memcheck on the default, the default in the smallest passes and the smallest-pass runs of the
#   key-block-major kernels: plain, warp-specialised, five stages, Q from shared memory; racecheck on the
#   default and those kernels in passes of the default size)
#   backward  test_cuda_backward (+ golden gradients; default, the warp-specialised kernel's variants
#             MOBA_CUDA_BWD_WS_DQ=atomic and =bulk, MOBA_CUDA_BWD_WS=0 = the Hopper dk/dv
#             kernel before it, MOBA_CUDA_BWD_KW=1 = that with one warpgroup per CTA, MOBA_CUDA_NO_WGMMA=1 =
#             the portable kernels), its quick subset under memcheck/racecheck (default, bulk), and
#             the per-kernel breakdown of one backward call for each benchmark case (random, local; two
#             cases also with the other kernels; BWD_NO_BREAKDOWN=1 skips these; BWD_TIMEOUT and
#             BWD_SAN_TIMEOUT replace the 200 s limit of each test and sanitizer run)
#   bwdbench  bench/gpu/bench_backward.py --quick (forward+backward vs SDPA)
#   decode    test_cuda_decode (the CUDA KV-cache append / attend against the CPU backend, docs/decode.md) and
#             its quick subset under memcheck
#   pytest    python/tests -k "cuda or hf" against this build (torch CUDA autograd, KVCache, the HF model)
#   variants  the benchmark's 'local' rows for each kernel variant (environment switches)
#   bench     bench/gpu/bench_forward.py (the table of docs/cuda.md)
#   ab, ab2   bench/gpu/ab.py: the switch sets AB_SETS (';'-separated) on the cases AB_CASES (default 2,3),
#             arguments AB_ARGS; ab2 the same with AB2_SETS / AB2_CASES / AB2_ARGS (default AB_ARGS)
# BUILD_TARGET=name builds only that target (a short call); a carried .prebuilt/ from tests/gpu/prebuild.sh
# (same tree) skips the build. Each test run has a timeout (rc 124 = a hang). Logs go to $OUT (the device tool brings back
# at most 8 files: a call of many phases plus profile_sass.sh loses the rest, so print what matters too). The copy gets tests/gpu/standalone_tests.cmake
# as its tests/CMakeLists.txt, so tests being written elsewhere in the tree cannot break this run.
set -u
# the dispatch modes of test and sanitize (';'-separated switch sets; TEST_MODES / SAN_MODES replace them)
DEFAULT_TEST_MODES="MOBA_CUDA_DEFAULT=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_NO_WGMMA=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_ROUTE_SORT=0"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM_DECIDE=0"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM_UNION=0"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM_RATIO=6 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_ROUTE_ROWTHR=0"
DEFAULT_TEST_MODES+=";MOBA_CUDA_ROUTE_ROWTHR=0 MOBA_CUDA_ROUTE_SORT=0"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM_FORK=0"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM_FORK=0 MOBA_CUDA_KBM_RATIO=6 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_ROUTE_FIRST32=0"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_TMA=0"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_TMA=0 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_TMA=1 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_STAGES=5"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_STAGES=5 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_QREG=0"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_QREG=0 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_TEST_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_PP=1"
DEFAULT_SAN_MODES="MOBA_CUDA_DEFAULT=1"
DEFAULT_SAN_MODES+=";MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_SAN_MODES+=";MOBA_CUDA_KBM_RATIO=6 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_SAN_MODES+=";MOBA_CUDA_ROUTE_ROWTHR=0"
DEFAULT_SAN_MODES+=";MOBA_CUDA_ROUTE_FIRST32=0"
DEFAULT_SAN_MODES+=";MOBA_CUDA_KBM_FORK=0 MOBA_CUDA_KBM_RATIO=6 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_SAN_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_SAN_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_SAN_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_TMA=0 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_SAN_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_STAGES=5 MOBA_CUDA_KBM_PAIRS=1"
DEFAULT_SAN_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_QREG=0 MOBA_CUDA_KBM_PAIRS=1"
# racecheck: the same kernels in passes of the default size. In 1-unit passes (PAIRS=1) every pass launches
# the warp-specialised kernel on every SM (the host does not know a pass's size since v19), each CTA with
# ~200 KiB of shared memory for racecheck to shadow, and the process was killed (SIGKILL, 2026-12-07); racecheck
# looks at shared memory within a CTA, which the pass size does not change (RACE_MODES replaces these)
DEFAULT_RACE_MODES="MOBA_CUDA_DEFAULT=1"
DEFAULT_RACE_MODES+=";MOBA_CUDA_KBM_RATIO=6"
DEFAULT_RACE_MODES+=";MOBA_CUDA_ROUTE_ROWTHR=0"
DEFAULT_RACE_MODES+=";MOBA_CUDA_ROUTE_FIRST32=0"
DEFAULT_RACE_MODES+=";MOBA_CUDA_KBM=1"
DEFAULT_RACE_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1"
DEFAULT_RACE_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_TMA=0"
DEFAULT_RACE_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_STAGES=5"
DEFAULT_RACE_MODES+=";MOBA_CUDA_KBM=1 MOBA_CUDA_KBM_WS=1 MOBA_CUDA_KBM_QREG=0"
# the dispatch modes of backward (BWD_MODES replaces them) and of its sanitizer runs (BWD_SAN_MODES): the
# default, the warp-specialised kernel's other dq forms (atomics, the consumers' bulk reductions), the
# kernels before it
DEFAULT_BWD_MODES="MOBA_CUDA_DEFAULT=1;MOBA_CUDA_BWD_WS_DQ=atomic;MOBA_CUDA_BWD_WS_DQ=bulk;MOBA_CUDA_BWD_WS=0"
DEFAULT_BWD_MODES+=";MOBA_CUDA_BWD_KW=1;MOBA_CUDA_NO_WGMMA=1"
DEFAULT_BWD_SAN_MODES="MOBA_CUDA_DEFAULT=1;MOBA_CUDA_BWD_WS_DQ=bulk"
OUT=${OUT:-/tmp/moba-out}
mkdir -p "$OUT"
phases=${*:-test sanitize bench}
ROOT=$(pwd)
SRC=/tmp/moba-src
rm -rf "$SRC" && mkdir -p "$SRC"
tar --exclude='./build*' --exclude=./.git -cf - . | tar -C "$SRC" -xf -
cp tests/gpu/standalone_tests.cmake "$SRC/tests/CMakeLists.txt"
if ! grep -q 'enable_language(CUDA)' "$SRC/CMakeLists.txt"; then  # see docs/cuda.md: the root must enable CUDA
  sed -i 's/^    set(MOBA_WITH_CUDA ON)/    set(MOBA_WITH_CUDA ON)\n    enable_language(CUDA)\n    find_package(CUDAToolkit REQUIRED)/' \
    "$SRC/CMakeLists.txt"
fi
cd "$SRC"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv;
  nvcc --version | tail -1; python3 -c 'import torch; print("torch", torch.__version__)';
  sha256sum src/cuda/*.cu src/cuda/*.h | sha256sum | cut -c1-16 | sed 's/^/src\/cuda sha256: /'; } \
  > "$OUT/info.txt" 2>&1
cat "$OUT/info.txt"
# a carried .prebuilt/ (tests/gpu/prebuild.sh) whose stamp matches this tree replaces the build
if [ -f "$ROOT/.prebuilt/stamp" ] && [ "$(cat "$ROOT/.prebuilt/stamp")" = "$(cd "$ROOT" && bash tests/gpu/build_stamp.sh)" ]; then
  cp -a "$ROOT/.prebuilt/build" build
  echo "build: prebuilt here ($(cat "$ROOT/.prebuilt/targets"))" | tee "$OUT/build.log"
elif ! { cmake -S . -B build -G Ninja -DMOBA_BUILD_TOOLS=OFF -DCMAKE_BUILD_TYPE=Release &&
       cmake --build build -j16 ${BUILD_TARGET:+--target $BUILD_TARGET}; } > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "build ok"
for phase in $phases; do
  case $phase in
  test)
    IFS=';' read -ra envs <<< "${TEST_MODES:-$DEFAULT_TEST_MODES}"
    for env in "${envs[@]}"; do
      env $env timeout 150 ./build/tests/gpu/test_cuda_forward > /tmp/t.log 2>&1
      echo "test_cuda_forward $env rc=$?" | tee -a "$OUT/tests.log"
      cat /tmp/t.log >> "$OUT/tests.log"
      grep -E "FAILED|routing:|passed" /tmp/t.log | head -12
      awk '/o err/ {split($0,a,"o err "); split(a[2],b," "); if (b[1]>m) m=b[1]} END {print "max o err", m}' /tmp/t.log
    done
    timeout 60 ./build/tests/gpu/test_cuda_golden "$ROOT/.golden" > /tmp/t.log 2>&1; echo "test_cuda_golden rc=$?" | tee -a "$OUT/tests.log"
    cat /tmp/t.log >> "$OUT/tests.log"; tail -3 /tmp/t.log ;;
  sanitize)
    for tool in memcheck racecheck; do
      if [ $tool = memcheck ]; then modes=${SAN_MODES:-$DEFAULT_SAN_MODES}; else modes=${RACE_MODES:-$DEFAULT_RACE_MODES}; fi
      IFS=';' read -ra envs <<< "$modes"
      for env in "${envs[@]}"; do
        env $env MOBA_GPU_TEST_QUICK=1 timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 \
          ./build/tests/gpu/test_cuda_forward > /tmp/t.log 2>&1
        echo "compute-sanitizer $tool $env rc=$?" | tee -a "$OUT/sanitize.log"
        cat /tmp/t.log >> "$OUT/sanitize.log"
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY|FAILED" /tmp/t.log | head -5
      done
    done ;;
  backward)
    IFS=';' read -ra envs <<< "${BWD_MODES:-$DEFAULT_BWD_MODES}"
    for env in "${envs[@]}"; do
      env $env timeout ${BWD_TIMEOUT:-200} ./build/tests/gpu/test_cuda_backward "$ROOT/.golden" > /tmp/t.log 2>&1
      echo "test_cuda_backward $env rc=$?" | tee -a "$OUT/backward.log"
      cat /tmp/t.log >> "$OUT/backward.log"; grep -E "FAILED|worst|passed|golden" /tmp/t.log | head -12
    done
    IFS=';' read -ra envs <<< "${BWD_SAN_MODES:-$DEFAULT_BWD_SAN_MODES}"
    for tool in memcheck racecheck; do for env in "${envs[@]}"; do
      env $env MOBA_GPU_TEST_QUICK=1 timeout ${BWD_SAN_TIMEOUT:-200} compute-sanitizer --tool $tool --error-exitcode 9 \
        ./build/tests/gpu/test_cuda_backward "$ROOT/.golden" > /tmp/t.log 2>&1
      echo "compute-sanitizer $tool backward $env rc=$?" | tee -a "$OUT/backward.log"
      cat /tmp/t.log >> "$OUT/backward.log"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|FAILED" /tmp/t.log | head -5
    done; done
    [ -n "${BWD_NO_BREAKDOWN:-}" ] && continue
    for c in 0 1 2 3; do for kind in random local; do
      python3 bench/gpu/breakdown.py --lib build/libmoba.so --case $c --kind $kind --op backward 2>&1 | head -14 \
        | grep -v -i warn | tee -a "$OUT/bwd_breakdown.log"
    done; done
    for c in 0 3; do for env in MOBA_CUDA_BWD_WS=0 MOBA_CUDA_BWD_KW=1 MOBA_CUDA_NO_WGMMA=1; do  # the other kernels
      env $env python3 bench/gpu/breakdown.py --lib build/libmoba.so --case $c --kind random --op backward \
        2>&1 | head -6 | grep -v -i warn | tee -a "$OUT/bwd_breakdown.log"
    done; done ;;
  decode)
    timeout 200 ./build/tests/gpu/test_cuda_decode > /tmp/t.log 2>&1; echo "test_cuda_decode rc=$?" | tee -a "$OUT/decode.log"
    cat /tmp/t.log >> "$OUT/decode.log"; tail -3 /tmp/t.log
    MOBA_GPU_TEST_QUICK=1 timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 ./build/tests/gpu/test_cuda_decode \
      > /tmp/t.log 2>&1; echo "compute-sanitizer memcheck decode rc=$?" | tee -a "$OUT/decode.log"
    cat /tmp/t.log >> "$OUT/decode.log"; grep -E "ERROR SUMMARY" /tmp/t.log | head -2 ;;
  pytest)  # python/gpu_check.sh on this build (its log, env.txt and the measured errors in $OUT)
    OUT="$OUT" MOBA_LIBRARY="$SRC/build/libmoba.so" MOBA_GOLDEN_DIR="$ROOT/.golden" timeout 200 bash python/gpu_check.sh \
      > /dev/null 2>&1
    echo "pytest rc=$?"; grep -E "^generate:|^decode steps|passed|failed|FAILED" "$OUT/pytest.log" | tail -8 ;;
  bwdbench)  # bench/gpu/bench_backward.py --quick (the table of docs/cuda-backward.md)
    PYTHONUNBUFFERED=1 python3 bench/gpu/bench_backward.py --lib build/libmoba.so --quick ${BENCH_ARGS:-} \
      > "$OUT/bwdbench.log" 2> "$OUT/bwdbench.err"; echo "bwdbench rc=$?"; tail -5 "$OUT/bwdbench.err"
    cat "$OUT/bwdbench.log" ;;
  variants)  # the kernel variants on the 'local' inputs, 3 repetitions each
    for env in "" MOBA_CUDA_SM90_MINB=1 MOBA_CUDA_NO_WGMMA=1; do
      echo "## variant: ${env:-default}" | tee -a "$OUT/variants.log"
      env $env PYTHONUNBUFFERED=1 python3 bench/gpu/bench_forward.py --lib build/libmoba.so --quick --kinds local \
        2>/dev/null | grep "^|" | tee -a "$OUT/variants.log"
    done ;;
  ab|ab2)
    if [ $phase = ab ]; then cases=${AB_CASES:-2,3}; sets=${AB_SETS:-MOBA_CUDA_DEFAULT=1}; args=${AB_ARGS:-}
    else cases=${AB2_CASES:-2,3}; sets=${AB2_SETS:-MOBA_CUDA_DEFAULT=1}; args=${AB2_ARGS-${AB_ARGS:-}}; fi
    timeout 300 python3 bench/gpu/ab.py --lib build/libmoba.so --cases "$cases" --sets "$sets" $args 2>&1 \
      | grep -v -i warn | tee -a "$OUT/ab.log" ;;
  bench)
    PYTHONUNBUFFERED=1 python3 bench/gpu/bench_forward.py --lib build/libmoba.so ${BENCH_ARGS:-} \
      > "$OUT/bench.log" 2> "$OUT/bench.err"; echo "bench rc=$?"; tail -5 "$OUT/bench.err"; cat "$OUT/bench.log" ;;
  esac
done
