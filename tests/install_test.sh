#!/bin/sh
# Installs the build into a temporary prefix and builds examples/simple.c against the installed library the
# two ways a user would: CMake's find_package(moba) (static library) and pkg-config (shared library).
#   usage: install_test.sh BUILD_DIR SOURCE_DIR
set -eu
build=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
mkdir "$work/app"
cp "$src/examples/simple.c" "$work/app/"
cat > "$work/app/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.18)
project(moba_consumer C)
find_package(moba REQUIRED)
add_executable(app simple.c)
target_link_libraries(app moba::moba)
CMAKE
cmake -S "$work/app" -B "$work/app/build" -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; exit 1; }
cmake --build "$work/app/build" > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
"$work/app/build/app" 300 2 | grep "relative error"
echo "find_package(moba): ok"
if command -v pkg-config > /dev/null; then
  export PKG_CONFIG_PATH="$(dirname "$(find "$work/prefix" -name moba.pc)")"
  libdir=$(pkg-config --variable=libdir moba)
  cc "$work/app/simple.c" $(pkg-config --cflags --libs moba) -lm -Wl,-rpath,"$libdir" -o "$work/app_pc"
  "$work/app_pc" 300 2 | grep "relative error"
  echo "pkg-config moba: ok ($(pkg-config --modversion moba))"
else
  echo "pkg-config not installed: that half is skipped"
fi
