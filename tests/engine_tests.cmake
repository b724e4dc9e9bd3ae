# InferenceEngine semantics with a fake model runner. Labelled "tsan": it runs under
# ThreadSanitizer (since the tokenizer's SentencePiece shim loads without RTLD_DEEPBIND,
# model/CMakeLists.txt) in .ci/run's TSAN step, which fails on any report.
specprune_add_test(engine_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_test.cc
  LIBS specprune_service
  LABELS tsan)
target_compile_definitions(engine_test PRIVATE SPECPRUNE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
