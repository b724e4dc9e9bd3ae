# Robot-side demo smoke test: `specprune_cli sim` drives simulator episodes through a real server
# on an ephemeral loopback port (embedded default model and its shipped pruning config).
if(TARGET specprune_server AND TARGET specprune_cli)
  add_test(NAME cli_sim_smoke
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli_sim_smoke.sh
                   $<TARGET_FILE:specprune_server> $<TARGET_FILE:specprune_cli>
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cli_sim_smoke PROPERTIES LABELS "client;server;integration;eval" TIMEOUT 300)
endif()
