# Layer dependency rules (docs/ARCHITECTURE.md "Dependency rules"): no folder may
# include a folder it must not. Needs only the source tree and /usr/bin/python3 (stdlib).
add_test(NAME layer_dependencies
         COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tools/check_layers.py ${CMAKE_SOURCE_DIR})
add_test(NAME layer_dependencies_self_test
         COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tools/check_layers.py --self-test)
set_tests_properties(layer_dependencies layer_dependencies_self_test PROPERTIES
                     LABELS "layers" TIMEOUT 60)
