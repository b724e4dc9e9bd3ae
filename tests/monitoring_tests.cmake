# Monitoring (deploy/monitoring_test.sh): promtool checks the Prometheus config and rules and runs
# the rule unit tests (deploy/prometheus/tests/); then a real Prometheus scrapes a real server under
# load and every query of the Grafana dashboard (deploy/grafana/dashboards/) must return data.
# Skipped (exit 77) when Debian's prometheus package (prometheus, promtool) is not installed.
if(TARGET specprune_server)
  set(_monitoring_args $<TARGET_FILE:specprune_server>)
  if(TARGET specprune_loadgen)
    list(APPEND _monitoring_args $<TARGET_FILE:specprune_loadgen>)
  else()
    list(APPEND _monitoring_args ${CMAKE_BINARY_DIR}/bin/specprune_loadgen)  # absent: CLI calls
  endif()
  if(TARGET specprune_cli)
    list(APPEND _monitoring_args $<TARGET_FILE:specprune_cli>)
  endif()
  add_test(NAME monitoring
           COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/monitoring_test.sh ${_monitoring_args}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(monitoring PROPERTIES LABELS "monitoring;server;integration" TIMEOUT 240
                                             SKIP_RETURN_CODE 77)
endif()
