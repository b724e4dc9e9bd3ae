# pruning tests (kernels + pruning policies)

specprune_add_test(kernels_test SOURCES kernels_test.cc LIBS specprune_kernels)
specprune_add_test(specprune_math_test SOURCES specprune_math_test.cc LIBS specprune_pruning)
specprune_add_test(pruning_config_test SOURCES pruning_config_test.cc LIBS specprune_pruning)
specprune_add_test(policies_test SOURCES policies_test.cc LIBS specprune_pruning)
specprune_add_test(specprune_policy_test SOURCES specprune_policy_test.cc LIBS specprune_pruning)
