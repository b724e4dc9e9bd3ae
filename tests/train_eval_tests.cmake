# Behaviour-cloning data pipeline and the closed-loop evaluation of the committed model (issue #6).
# Behaviour cloning: demonstrations and batches, the training forward against the served model,
# rollouts (one fixture header, bc_test_util.h).
foreach(t bc_data_test training_forward_test policy_rollout_test)
  specprune_add_test(${t} SOURCES ${CMAKE_CURRENT_LIST_DIR}/${t}.cc LIBS specprune_bc_data)
  target_compile_definitions(${t} PRIVATE SPECPRUNE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
endforeach()

# CI check that the committed model still succeeds, unpruned and with SpecPrune at its shipped
# pruning_config.json: a few episodes of the three one-goal procedural suites; fails unless the
# mean unpruned success rate is above SPECPRUNE_EVAL_MIN_SUCCESS and SpecPrune's is at most
# SPECPRUNE_EVAL_MAX_SPECPRUNE_GAP below it. The committed model (tools/train_tiny.sh's R3+C4)
# was trained on LIBERO's fixed task sets only, so the procedural suites (a new task per seed) are
# out of its distribution: 18/30 unpruned and 17/30 with SpecPrune at 37-41% retention here. The
# first trained model (spatial 10%, object 12%, goal 52%) would fail the first; the stage-2 model at
# its default scales fails the second (unpruned 22/30, SpecPrune 13/30). Override with
# -DSPECPRUNE_EVAL_MIN_SUCCESS=0.5 / -DSPECPRUNE_EVAL_MODEL=models/...
set(SPECPRUNE_EVAL_MODEL "${CMAKE_SOURCE_DIR}/models/tiny" CACHE PATH
    "Model directory the closed-loop CI evaluation runs")
set(SPECPRUNE_EVAL_MIN_SUCCESS "0.5" CACHE STRING
    "Unpruned success rate the closed-loop CI evaluation must exceed")
set(SPECPRUNE_EVAL_EPISODES "10" CACHE STRING "Episodes per suite of the closed-loop CI evaluation")
set(SPECPRUNE_EVAL_MAX_SPECPRUNE_GAP "0.2" CACHE STRING
    "Largest unpruned - SpecPrune success gap the closed-loop CI evaluation accepts")
# The issue's protocol, LIBERO's fixed task sets: the committed model solves 30/30 of these
# episodes unpruned (99.25% over 200 per suite, docs/BENCHMARKS.md), so the bar is higher there.
set(SPECPRUNE_EVAL_FIXED_MIN_SUCCESS "0.8" CACHE STRING
    "Unpruned success rate the fixed-task closed-loop CI evaluation must exceed")
option(SPECPRUNE_CLOSED_LOOP_EVAL_TEST "Register the closed-loop evaluation of the committed model" ON)
if(SPECPRUNE_CLOSED_LOOP_EVAL_TEST)
add_test(NAME closed_loop_eval_smoke
         COMMAND specprune_eval --model ${SPECPRUNE_EVAL_MODEL} --suites spatial,object,goal
                 --methods none,specprune --reference=0
                 --episodes ${SPECPRUNE_EVAL_EPISODES} --seed 3000000 --threads 1
                 --require_success ${SPECPRUNE_EVAL_MIN_SUCCESS}
                 --require_specprune_within ${SPECPRUNE_EVAL_MAX_SPECPRUNE_GAP}
                 --json ${CMAKE_BINARY_DIR}/closed_loop_eval_smoke.json
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(closed_loop_eval_smoke PROPERTIES LABELS "eval" TIMEOUT 600)
# The same on LIBERO's protocol (ten fixed tasks per suite; the issue's floors are measured this
# way), with SpecPrune too.
add_test(NAME closed_loop_eval_fixed_tasks_smoke
         COMMAND specprune_eval --model ${SPECPRUNE_EVAL_MODEL} --suites spatial,object,goal
                 --methods none,specprune --reference=0 --fixed_tasks 10
                 --episodes ${SPECPRUNE_EVAL_EPISODES} --seed 3000000 --threads 1
                 --require_success ${SPECPRUNE_EVAL_FIXED_MIN_SUCCESS}
                 --require_specprune_within ${SPECPRUNE_EVAL_MAX_SPECPRUNE_GAP}
                 --json ${CMAKE_BINARY_DIR}/closed_loop_eval_fixed_tasks_smoke.json
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(closed_loop_eval_fixed_tasks_smoke PROPERTIES LABELS "eval" TIMEOUT 600)
endif()

# The trainer: a few steps with every grounding loss, checkpoint, resume, load for evaluation.
add_test(NAME train_smoke
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/train_smoke.sh $<TARGET_FILE:specprune_train>
                 $<TARGET_FILE:specprune_eval> ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/train_smoke)
set_tests_properties(train_smoke PROPERTIES LABELS "eval" TIMEOUT 600)

# tools/train_tiny.sh, the 3-hour recipe: both phases, A -> B, resumable (shrunk by extra flags).
add_test(NAME train_tiny_recipe_smoke
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/train_tiny_smoke.sh $<TARGET_FILE:specprune_train>
                 ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/train_tiny_smoke)
set_tests_properties(train_tiny_recipe_smoke PROPERTIES LABELS "eval" TIMEOUT 600)

# A bad --pruning file is rejected with the field named (same parser as the server config).
add_test(NAME eval_rejects_bad_pruning_config
         COMMAND specprune_eval --model ${CMAKE_SOURCE_DIR}/models/tiny --suites goal --methods none
                 --episodes 1 --pruning ${CMAKE_CURRENT_LIST_DIR}/data/pruning_negative_k_global.json)
set_tests_properties(eval_rejects_bad_pruning_config PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION "pruning.specprune.k_global: must be >= 0")

# --require_specprune_within fails the run when SpecPrune loses too much: with one token per set
# (tests/data/pruning_starved_specprune.json) the goal suite drops from 4/4 to 0/4.
add_test(NAME eval_fails_when_specprune_falls_behind
         COMMAND specprune_eval --model ${CMAKE_SOURCE_DIR}/models/tiny --suites goal
                 --methods none,specprune --reference=0 --episodes 4 --threads 1
                 --pruning ${CMAKE_CURRENT_LIST_DIR}/data/pruning_starved_specprune.json
                 --require_specprune_within 0.2)
set_tests_properties(eval_fails_when_specprune_falls_behind PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION
                     "specprune success [0-9.]+ is more than --require_specprune_within 0.200 below")

# --help prints the usage and every flag and exits 0 (util/command_line.h); an unknown flag is
# Abseil's error and exit 1; a stray value (`--reference 0` instead of `--reference=0`) exit 2.
# --timing_rounds: interleaved timing rounds, outcomes unchanged (tests/eval_timing_rounds.sh).
add_test(NAME eval_timing_rounds
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/eval_timing_rounds.sh $<TARGET_FILE:specprune_eval>
                 ${CMAKE_SOURCE_DIR}/models/tiny ${CMAKE_BINARY_DIR}/eval_timing_rounds)
set_tests_properties(eval_timing_rounds PROPERTIES LABELS "eval" TIMEOUT 300)
add_test(NAME eval_help_lists_flags COMMAND specprune_eval --help)
set_tests_properties(eval_help_lists_flags PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION "usage: specprune_eval.*--require_specprune_within")
add_test(NAME train_help_lists_flags COMMAND specprune_train --help)
set_tests_properties(train_help_lists_flags PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION "usage: specprune_train.*--dagger_states")
add_test(NAME make_checkpoint_help_lists_flags COMMAND specprune_make_checkpoint --help)
set_tests_properties(make_checkpoint_help_lists_flags PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION "usage: specprune_make_checkpoint.*--resource_check")
add_test(NAME eval_rejects_unknown_flag COMMAND specprune_eval --model models/tiny --bogus 1)
set_tests_properties(eval_rejects_unknown_flag PROPERTIES LABELS "eval" WILL_FAIL TRUE)
add_test(NAME eval_names_unknown_flag COMMAND specprune_eval --model models/tiny --bogus 1)
set_tests_properties(eval_names_unknown_flag PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION "Unknown command line flag 'bogus'")
add_test(NAME eval_rejects_bool_flag_with_separate_value
         COMMAND specprune_eval --model models/tiny --reference 0)
set_tests_properties(eval_rejects_bool_flag_with_separate_value PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION "specprune_eval: unexpected argument '0' \\(bool flags take --name=0")
add_test(NAME train_rejects_out_of_range_flag COMMAND specprune_train --drop_frac 1.5)
set_tests_properties(train_rejects_out_of_range_flag PROPERTIES LABELS "eval" WILL_FAIL TRUE)

# Several runs on the same episodes (one --methods none, one per --pruning config) read as one:
# the same pairing, the method labelled by its --pruning file; runs on other seeds are refused.
add_test(NAME eval_table_pairs_runs_of_separate_files
         COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/bench/eval_table.py
                 ${CMAKE_CURRENT_LIST_DIR}/data/eval_result_small_none.json
                 ${CMAKE_CURRENT_LIST_DIR}/data/eval_result_small_specprune.json)
set_tests_properties(eval_table_pairs_runs_of_separate_files PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION
                     "\\| specprune \\(specprune-alpha1.9-fine2.8-kg14-kl4-kd0\\) \\| long \\| 3 \\| 1 \\| -2 \\| 0.625 \\|")
add_test(NAME eval_table_refuses_runs_on_other_seeds
         COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/bench/eval_table.py
                 ${CMAKE_CURRENT_LIST_DIR}/data/eval_result_small_none.json
                 ${CMAKE_CURRENT_LIST_DIR}/data/eval_result_small.json)
set_tests_properties(eval_table_refuses_runs_on_other_seeds PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION "seed None differs from .*would not pair up")

# bench/eval_table.py: the Markdown table and the paired comparison with `none` (same seeds): in
# tests/data/eval_result_small.json SpecPrune loses 3 of none's episodes and wins 1 (p = 0.625); its
# failure modes and commonest wrong grasps.
add_test(NAME eval_table_pairs_methods_with_none
         COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/bench/eval_table.py
                 ${CMAKE_CURRENT_LIST_DIR}/data/eval_result_small.json)
set_tests_properties(eval_table_pairs_methods_with_none PROPERTIES LABELS "eval"
                     PASS_REGULAR_EXPRESSION
                     "\\| specprune \\| long \\| 2/6 \\| 31.0% \\| 63.0% \\| – .*\\| specprune \\| long \\| 3 \\| 1 \\| -2 \\| 0.625 \\|.*\\| specprune \\| long \\| 4 \\| 2 \\(1 / 1\\) \\| 2 \\(1 / 0\\) \\| 0 \\| blue cylinder -> blue cube 1, red cube -> green cube 1 \\|")
