# The install tree on its own (tests/install_test.sh): `cmake --install` of this build into a
# temporary prefix, the installed server, a consumer CMake project (tests/data/consumer/) built
# with find_package(SpecPruneClient) against the prefix alone, and the Python SDK imported from the
# prefix without PYTHONPATH (and pip-installed from its pyproject.toml into a fresh venv).
# Skipped (exit 77) without python3-venv.
if(TARGET specprune_server AND TARGET specprune_cli AND TARGET specprune_loadgen AND
   TARGET specprune_python_sdk)
  add_test(NAME install
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/install_test.sh ${CMAKE_BINARY_DIR}
           WORKING_DIRECTORY ${CMAKE_BINARY_DIR})
  set_tests_properties(install PROPERTIES LABELS "install;server;integration" TIMEOUT 300
                                          SKIP_RETURN_CODE 77)
endif()
