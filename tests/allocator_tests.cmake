# The model executables' heap allocator (CMakeLists.txt SPECPRUNE_TCMALLOC): malloc resolves to
# tcmalloc_minimal at run time. Only where the build links it.
if(NOT SPECPRUNE_TCMALLOC_ACTIVE)
  return()
endif()
set(_allocator_exes)
foreach(_exe specprune_server specprune_eval specprune_bench specprune_train
             specprune_make_checkpoint)
  if(TARGET ${_exe})
    list(APPEND _allocator_exes $<TARGET_FILE:${_exe}>)
  endif()
endforeach()
add_test(NAME executables_use_tcmalloc
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/allocator_test.sh ${_allocator_exes})
set_tests_properties(executables_use_tcmalloc PROPERTIES TIMEOUT 120)
