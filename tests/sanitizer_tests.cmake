# The ThreadSanitizer triage of .ci/run (.ci/tsan_triage.py) on real TSAN reports: it must fail on
# a race in project code and pass the uninstrumented gRPC's own hand-offs.
add_test(NAME tsan_triage
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/tsan_triage_test.sh
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(tsan_triage PROPERTIES LABELS unit TIMEOUT 60)
