# Decode benchmark (CPU): MoBA vs full-attention decode over the same KV cache. Included from
# bench/CMakeLists.txt. tools/decode_cache.c (filling a cache, timing attend steps) is shared with `moba decode-bench`.
add_executable(moba_bench_decode ${CMAKE_CURRENT_LIST_DIR}/decode_bench.c ${PROJECT_SOURCE_DIR}/tools/decode_cache.c)
target_include_directories(moba_bench_decode PRIVATE ${PROJECT_SOURCE_DIR}/tools)
target_compile_options(moba_bench_decode PRIVATE -Wall -Wextra)
target_link_libraries(moba_bench_decode PRIVATE moba_static m)
