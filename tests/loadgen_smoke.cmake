# Load generator smoke test: a real server on an ephemeral loopback port, 2 robots x 5 steps.
if(TARGET specprune_server AND TARGET specprune_loadgen)
  add_test(NAME loadgen_smoke
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/loadgen_smoke.sh
                   $<TARGET_FILE:specprune_server> $<TARGET_FILE:specprune_loadgen>
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(loadgen_smoke PROPERTIES LABELS "client;server;integration" TIMEOUT 60)
endif()
