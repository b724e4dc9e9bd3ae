# The CPU BLAS core selection (util/blas_runtime.h). The unit test links LibTorch, so the BLAS it
# checks is the one the model computes with.
specprune_add_test(blas_runtime_test SOURCES blas_runtime_test.cc
  LIBS specprune_blas_runtime ${TORCH_LIBRARIES})

# End to end with the generic kernel forced: the bench (and, when built, the server through
# specprune_cli info) picks the best core the CPU supports.
if(TARGET specprune_bench)
  set(_blas_smoke_args $<TARGET_FILE:specprune_bench>)
  if(TARGET specprune_server AND TARGET specprune_cli)
    list(APPEND _blas_smoke_args $<TARGET_FILE:specprune_server> $<TARGET_FILE:specprune_cli>)
  endif()
  add_test(NAME blas_core_smoke
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/blas_core_smoke.sh ${_blas_smoke_args}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(blas_core_smoke PROPERTIES LABELS "integration;blas" TIMEOUT 600)
endif()

# oneDNN's primitive cache size (util/onednn_cache.h), checked against the oneDNN LibTorch links.
specprune_add_test(onednn_cache_test SOURCES onednn_cache_test.cc
  LIBS specprune_blas_runtime ${TORCH_LIBRARIES})
