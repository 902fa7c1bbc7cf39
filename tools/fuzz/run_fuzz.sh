#!/usr/bin/env bash
# Builds one libFuzzer target with clang (ASan + UBSan) and runs it for a few seconds:
#   run_fuzz.sh TARGET SOURCE_DIR WORK_DIR SECONDS
# Exit 77 (ctest: skipped) when clang or its fuzzer runtime is not installed; 1 on a finding.
# CC for the fuzz build: $MOBA_FUZZ_CC, else clang.
set -u
target=$1 src=$2 work=$3 secs=$4
cc=${MOBA_FUZZ_CC:-clang}
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "$cc not found: skipped (Debian: apt-get install clang)"
    exit 77
fi
mkdir -p "$work"
probe=$work/probe_$target
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' >"$probe.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe.c" -o "$probe" >/dev/null 2>&1; then
    echo "$cc cannot link -fsanitize=fuzzer: skipped (Debian: apt-get install libclang-rt-dev or libclang-rt-14-dev)"
    exit 77
fi
case $target in
fuzz_npy) sources="$src/tools/fuzz/fuzz_npy.c $src/tools/npy.c" ;;
fuzz_args) sources="$src/tools/fuzz/fuzz_args.c $src/tools/args.c $src/tools/opts.c" ;;
*) echo "unknown fuzz target $target"; exit 2 ;;
esac
bin=$work/$target
# shellcheck disable=SC2086
"$cc" -g -O1 -std=c11 -D_POSIX_C_SOURCE=200809L -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -I"$src/tools" -I"$src/include" $sources -o "$bin" -lm || { echo "cannot build $target"; exit 1; }

# seeds: a valid file / command line of each kind, so the fuzzer starts from the interesting shapes
seeds=$work/${target}_seeds
corpus=$work/${target}_corpus
mkdir -p "$seeds" "$corpus"
if [ "$target" = fuzz_npy ]; then
    hdr="{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1, 2), }"
    { printf '\223NUMPY\001\000\106\000%-69s\n' "$hdr"; printf '\000\000\200\077%.0s' 1 2 3 4; } >"$seeds/f4.npy"
    hdr="{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }"
    { printf '\223NUMPY\001\000\106\000%-69s\n' "$hdr"; printf '\001\000\000\000%.0s' 1 2 3; } >"$seeds/i4.npy"
else
    printf '\000--q\000q.npy\000--k\000k.npy\000--v\000v.npy\000--cu-seqlens\000c.npy\000--block-size\0004\000--top-k\0002\000--out\000o.npy' >"$seeds/attn"
    printf '\002--seqlen\0004096\000--svg=r.svg\000--needle-snr\0002.5\000--device\000cpu' >"$seeds/demo"
    printf '\003--lengths\000128,256\000--heads\0004\000--kv-heads\0002\000--forward-only' >"$seeds/bench"
fi
cd "$work" || exit 1
"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$work/${target}_" -print_final_stats=1 \
    "$corpus" "$seeds" 2>&1 | tail -n 25
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && echo "1 passed, 0 failed" || echo "0 passed, 1 failed"
exit "$status"
