# Decode benchmark (CPU): MoBA vs full-attention decode over the same KV cache. Included from
# bench/CMakeLists.txt.
add_executable(moba_bench_decode ${CMAKE_CURRENT_LIST_DIR}/decode_bench.c)
target_compile_options(moba_bench_decode PRIVATE -Wall -Wextra)
target_link_libraries(moba_bench_decode PRIVATE moba_static m)
