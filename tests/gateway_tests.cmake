# Fleet gateway (deploy/gateway/gateway_test.py): real nginx with deploy/gateway/nginx.conf in
# front of 3 (then 4) real server replicas on loopback, 64 robots driven by the Python SDK:
# stickiness, kill -9 failover, SIGTERM rolling restart, scale-out. Writes its numbers to
# <build>/gateway_test.json. Skipped (exit 77) when nginx is not installed (deploy/setup.sh).
if(TARGET specprune_python_stubs AND TARGET specprune_server)
  add_test(NAME gateway
           COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/deploy/gateway/gateway_test.py
                   --server $<TARGET_FILE:specprune_server>
                   --json ${CMAKE_BINARY_DIR}/gateway_test.json
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(gateway PROPERTIES
    ENVIRONMENT "PYTHONPATH=${CMAKE_SOURCE_DIR}/client/python:${CMAKE_BINARY_DIR}/python"
    LABELS "gateway;integration;server;python"
    TIMEOUT 240
    SKIP_RETURN_CODE 77)
endif()

# Static checks of deploy/gateway/nginx.conf and envoy.yaml (Envoy is not in Debian: YAML and
# cross-config consistency only) plus `nginx -t` when nginx is installed. No build needed.
add_test(NAME gateway_config
         COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/deploy/gateway/config_check.py
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(gateway_config PROPERTIES LABELS "gateway" TIMEOUT 60)
