# InferenceEngine semantics with a fake model runner.
# Not labelled "tsan": the engine needs a Tokenizer, whose SentencePiece shim is dlopen'ed with
# RTLD_DEEPBIND (model/tokenizer.cc), and sanitizer runtimes abort on RTLD_DEEPBIND.
specprune_add_test(engine_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/engine_test.cc
  LIBS specprune_service)
target_compile_definitions(engine_test PRIVATE SPECPRUNE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
