# VLA model, FLOPs and checkpoint tests (LibTorch).
specprune_add_test(vla_model_test SOURCES vla_model_test.cc LIBS specprune_model)
# The ragged batch layout: repacking, sub-batches by length.
specprune_add_test(sequence_layout_test SOURCES sequence_layout_test.cc LIBS specprune_model)
# Model directories (checkpoint_test) and their PyTorch .pt side files (torch_pickle_test), on one
# fixture (checkpoint_test_fixture.h).
specprune_add_test(checkpoint_test SOURCES checkpoint_test.cc LIBS specprune_model)
specprune_add_test(torch_pickle_test SOURCES torch_pickle_test.cc LIBS specprune_model)
# Layers that create parameters per a placement (random like torch::nn, or uninitialized).
specprune_add_test(model_layers_test SOURCES model_layers_test.cc LIBS specprune_model)
foreach(t checkpoint_test torch_pickle_test)
  target_compile_definitions(${t} PRIVATE SPECPRUNE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
endforeach()

if(SPECPRUNE_BUILD_SERVER)
  # A real server on an ephemeral loopback port, driven by the C++ SDK.
  specprune_add_test(server_integration_test SOURCES server_integration_test.cc
                     LIBS specprune_service specprune_client LABELS integration)
  # TLS, mTLS, certificate rotation and robot-bound tokens over loopback (openssl makes the PKI).
  specprune_add_test(security_integration_test SOURCES security_integration_test.cc
                     LIBS specprune_service specprune_client LABELS integration)
endif()

specprune_add_test(specprune_model_test SOURCES specprune_model_test.cc
                   LIBS specprune_model specprune_pruning)
# HF OpenVLA(-OFT) config.json mapping and norm_stats; Llama layer vs a formula reference; vision
# tower geometry of the 7B config without its weights.
specprune_add_test(hf_checkpoint_test SOURCES hf_checkpoint_test.cc LIBS specprune_model)
target_compile_definitions(hf_checkpoint_test PRIVATE SPECPRUNE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
specprune_add_test(llama_reference_test SOURCES llama_reference_test.cc LIBS specprune_model)
specprune_add_test(vision_geometry_test SOURCES vision_geometry_test.cc LIBS specprune_model)

# The policy step: observation -> pruned forward -> un-normalized chunk + telemetry.
specprune_add_test(policy_step_test SOURCES policy_step_test.cc LIBS specprune_policy)
target_compile_definitions(policy_step_test PRIVATE SPECPRUNE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
