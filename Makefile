# Thin wrapper around CMake. The two commands of the README:
#   make run    build, then run the demo (the `moba` command; until it exists, the example program)
#   make test   build, run ctest; rebuild with ASan+UBSan and run ctest again; run the Python tests
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTHON ?= python3
CMAKE_ARGS ?=

.PHONY: all build run test test-c test-asan test-python bench install clean

all: build

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)
	cmake --build $(BUILD) -j $(JOBS)

run: build
	@if [ -x $(BUILD)/tools/moba ]; then $(BUILD)/tools/moba demo; else $(BUILD)/examples/moba_example; fi

test: test-c test-asan test-python

test-c: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The sanitizer build leaves CUDA out: the CUDA runtime is not built for ASan and CI has no GPU.
test-asan:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOBA_SANITIZE=ON -DMOBA_CUDA=OFF $(CMAKE_ARGS)
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --output-on-failure -j $(JOBS) -LE no_sanitize

test-python: build
	@if [ -d python/tests ]; then \
	  MOBA_LIBRARY=$(abspath $(BUILD))/libmoba.so $(PYTHON) -m pytest -q python/tests; \
	else echo "no python tests"; fi

bench: build
	$(BUILD)/bench/moba_bench_cpu

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
