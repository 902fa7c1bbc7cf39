# A minimal tests/CMakeLists.txt for building only the GPU tests (tests/gpu/device_run.sh uses it on
# a copy of the tree, so that other tests being written at the same time cannot break the GPU run).
enable_testing()
add_library(moba_ref64 STATIC ref64.c)
target_include_directories(moba_ref64 PUBLIC ${CMAKE_CURRENT_SOURCE_DIR} ${PROJECT_SOURCE_DIR}/include)
target_link_libraries(moba_ref64 PUBLIC m)
set(MOBA_GOLDEN_DIR "${PROJECT_SOURCE_DIR}/.golden" CACHE PATH "golden cases")
add_subdirectory(gpu)
