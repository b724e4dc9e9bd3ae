# The reference check against transformers/timm (issue #28 item 6): tools/reference_check.py and
# the dump tool it drives (tools/reference_dump.cc). The comparison itself needs torch,
# transformers, timm and safetensors (a GPU host; bench/gpu.sh runs it). What runs everywhere,
# with the stdlib only (--self_test): the script's name table mapped onto our loader's names at a
# small shape, its HF config.json resolving to the shapes it builds, the dump tool on that
# checkpoint and on models/tiny (names and shapes of every output, served forward == replica,
# fp32 and bf16), bad inputs refused naming the tensor, and the check exiting 77 without torch.
if(TARGET specprune_reference_dump)
  add_test(NAME reference_check_self_test
           COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tools/reference_check.py --self_test
                   --dump_tool $<TARGET_FILE:specprune_reference_dump>
                   --work ${CMAKE_BINARY_DIR}/reference_check_self_test)
  set_tests_properties(reference_check_self_test PROPERTIES LABELS "model;reference" TIMEOUT 300)
  # The check proper: skipped (exit 77) where torch & co are missing, i.e. on CPU CI hosts.
  add_test(NAME reference_check
           COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tools/reference_check.py
                   --dump_tool $<TARGET_FILE:specprune_reference_dump>
                   --work ${CMAKE_BINARY_DIR}/reference_check
                   --json ${CMAKE_BINARY_DIR}/reference_check.json)
  set_tests_properties(reference_check PROPERTIES LABELS "model;reference" TIMEOUT 600
                       SKIP_RETURN_CODE 77)
  add_test(NAME reference_dump_help_lists_flags COMMAND specprune_reference_dump --help)
  set_tests_properties(reference_dump_help_lists_flags PROPERTIES LABELS "reference"
                       PASS_REGULAR_EXPRESSION "usage: specprune_reference_dump.*--print_config")
endif()
