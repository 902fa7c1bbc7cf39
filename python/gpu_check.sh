#!/usr/bin/env bash
# On a GPU machine, from the repository root: build libmoba with its CUDA backend, run the torch CUDA and
# transformers tests against it, and keep the log and every measured error (for docs/python.md).
#   bash python/gpu_check.sh            # results in $OUT, or /tmp/moba-gpu
# With MOBA_LIBRARY set to an existing CUDA build of libmoba (tests/gpu/device_run.sh's pytest phase) it tests
# that one instead of building; MOBA_GOLDEN_DIR, if set, passes through to the tests.
set -euo pipefail
out=${OUT:-/tmp/moba-gpu}
mkdir -p "$out"
if [ -z "${MOBA_LIBRARY:-}" ] || [ ! -f "$MOBA_LIBRARY" ]; then
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMOBA_BUILD_TESTS=OFF -DMOBA_BUILD_TOOLS=OFF > "$out/cmake.log"
  cmake --build build-gpu -j"$(nproc)" >> "$out/cmake.log"
  grep "CUDA backend" "$out/cmake.log" || true
  MOBA_LIBRARY=$PWD/build-gpu/libmoba.so
fi
export MOBA_LIBRARY MOBA_TEST_REPORT=$out/python_errors.txt PYTHONUNBUFFERED=1
rm -f "$MOBA_TEST_REPORT"
python3 - <<'PY' | tee "$out/env.txt"
import sys, torch; sys.path.insert(0, "python"); import moba
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
print("libmoba", moba.version(), moba.library_path(), "cuda backend:", moba.backend_available("cuda"))
PY
python3 -m pytest -v -rs -s python/tests -k "cuda or hf" 2>&1 | tee "$out/pytest.log"  # -s: the spreads they print
echo "measured errors: $MOBA_TEST_REPORT"
