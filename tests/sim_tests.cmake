# Tabletop simulator tests (no LibTorch).
specprune_add_test(sim_test SOURCES sim_test.cc LIBS specprune_sim)
