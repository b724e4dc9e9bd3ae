# Tabletop simulator tests (no LibTorch), one file per unit; tests/sim_test_util.h has their helpers.
specprune_add_test(sim_test SOURCES sim_test.cc LIBS specprune_sim)
specprune_add_test(sim_expert_test SOURCES sim_expert_test.cc LIBS specprune_sim)
specprune_add_test(sim_world_test SOURCES sim_world_test.cc LIBS specprune_sim)
specprune_add_test(sim_render_test SOURCES sim_render_test.cc LIBS specprune_sim)
