# server tests
specprune_add_test(grpc_status_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/grpc_status_test.cc
  LIBS specprune_server_core)
specprune_add_test(server_config_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/server_config_test.cc ${CMAKE_SOURCE_DIR}/server/server_flags.cc
  LIBS specprune_server_core)
specprune_add_test(request_validation_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/request_validation_test.cc
  LIBS specprune_server_core)
specprune_add_test(auth_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/auth_test.cc
  LIBS specprune_server_core)
specprune_add_test(metrics_http_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/metrics_http_test.cc
  LIBS specprune_server_core)
specprune_add_test(process_metrics_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/process_metrics_test.cc
  LIBS specprune_server_core)
specprune_add_test(metrics_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/metrics_test.cc
  LIBS specprune_server_core)
specprune_add_test(request_log_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/request_log_test.cc
  LIBS specprune_server_core
  LABELS tsan)
specprune_add_test(action_seam_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/action_seam_test.cc
  LIBS specprune_server_core)
specprune_add_test(session_store_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/session_store_test.cc
  LIBS specprune_server_core
  LABELS tsan)
specprune_add_test(admission_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/admission_test.cc
  LIBS specprune_server_core
  LABELS tsan)
specprune_add_test(batcher_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/batcher_test.cc
  LIBS specprune_server_core
  LABELS tsan)
