# VLA model, FLOPs and checkpoint tests (LibTorch).
specprune_add_test(vla_model_test SOURCES vla_model_test.cc LIBS specprune_model)
specprune_add_test(checkpoint_test SOURCES checkpoint_test.cc LIBS specprune_model)
target_compile_definitions(checkpoint_test PRIVATE SPECPRUNE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
