# InferenceEngine semantics with a fake model runner (also run under ThreadSanitizer in CI).
specprune_add_test(engine_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_test.cc
  LIBS specprune_service
  LABELS tsan)
target_compile_definitions(engine_test PRIVATE SPECPRUNE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
