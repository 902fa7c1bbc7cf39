#!/bin/bash
# A hash of what the CUDA build reads (C/CUDA sources and headers, CMake files) under the current
# directory: the same on this machine and on the GPU machine when the trees agree (tests/gpu/prebuild.sh,
# tests/gpu/device_run.sh).
find . \( -path ./.git -o -path ./.prebuilt -o -path './build*' -o -path ./.golden -o -path ./shared \) -prune -o \
  -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.inc' -o -name '*.cmake' -o -name 'CMakeLists.txt' \
  -o -name '*.in' \) -print | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
