# model tests

specprune_add_test(image_codec_test SOURCES image_codec_test.cc LIBS specprune_image)
specprune_add_test(image_preprocess_test SOURCES image_preprocess_test.cc LIBS specprune_image)

# Checkpoint I/O (safetensors, dataset statistics, tokenizer); no LibTorch.
specprune_add_test(safetensors_test SOURCES safetensors_test.cc LIBS specprune_checkpoint_io GTest::gmock)
specprune_add_test(float_conversion_test SOURCES float_conversion_test.cc LIBS specprune_checkpoint_io)
specprune_add_test(dataset_stats_test SOURCES dataset_stats_test.cc LIBS specprune_checkpoint_io GTest::gmock)
specprune_add_test(tokenizer_test SOURCES tokenizer_test.cc LIBS specprune_checkpoint_io GTest::gmock)
target_compile_definitions(tokenizer_test PRIVATE SPECPRUNE_TEST_DATA_DIR="${SPECPRUNE_TEST_DATA}")
if(TARGET protobuf::libprotobuf)
  # The tokenizer next to libprotobuf 3.21 (as in the server): SentencePiece's embedded protobuf
  # must not bind to it (model/CMakeLists.txt).
  target_link_libraries(tokenizer_test PRIVATE protobuf::libprotobuf)
  target_compile_definitions(tokenizer_test PRIVATE SPECPRUNE_TOKENIZER_TEST_WITH_PROTOBUF=1)
endif()
