#!/bin/bash
# Build on this machine what tests/gpu/device_run.sh would build on the GPU machine, into .prebuilt/
# (.gitignore excludes it), so that a device call can skip its build - about a minute of device time per
# call. It works because the GPU machine's nvcc is the same release as here (13.0) and everything
# device_run.sh runs links the CUDA runtime statically (libmoba.so, the test programs; they need libgomp
# and libstdc++ there). device_run.sh uses .prebuilt/ when it is carried (`carry: [".prebuilt", ...]`)
# and its stamp - a hash of the build's inputs, tests/gpu/build_stamp.sh - matches the tree; otherwise
# it builds as before.
#   bash tests/gpu/prebuild.sh [target ...]    default: moba_shared and the four GPU test programs
set -eu
ROOT=$(pwd)
SRC=/tmp/moba-src # device_run.sh's path, so that the build's paths are the same there
targets=${*:-moba_shared test_cuda_forward test_cuda_golden test_cuda_backward test_cuda_decode}
stamp=$(bash tests/gpu/build_stamp.sh)
rm -rf "$SRC" && mkdir -p "$SRC"
tar --exclude='./build*' --exclude=./.git --exclude=./.prebuilt -cf - . | tar -C "$SRC" -xf -
cp tests/gpu/standalone_tests.cmake "$SRC/tests/CMakeLists.txt"
cd "$SRC"
cmake -S . -B build -G Ninja -DMOBA_BUILD_TOOLS=OFF -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j"$(nproc)" --target $targets
rm -rf "$ROOT/.prebuilt" && mkdir -p "$ROOT/.prebuilt/build/tests/gpu"
cp -a build/libmoba.so* "$ROOT/.prebuilt/build/"
for t in build/tests/gpu/test_cuda_*; do [ -x "$t" ] && cp -a "$t" "$ROOT/.prebuilt/build/tests/gpu/"; done
echo "$stamp" > "$ROOT/.prebuilt/stamp"
echo "$targets" > "$ROOT/.prebuilt/targets"
du -sh "$ROOT/.prebuilt"
