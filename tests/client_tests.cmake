# client tests
specprune_add_test(client_test SOURCES client_test.cc LIBS specprune_client)

if(TARGET specprune_python_stubs)
  add_test(NAME python_sdk_tests
           COMMAND /usr/bin/python3 -m pytest -q ${CMAKE_SOURCE_DIR}/tests/python
                   -k "not integration" -p no:cacheprovider
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(python_sdk_tests PROPERTIES
    ENVIRONMENT "PYTHONPATH=${CMAKE_SOURCE_DIR}/client/python:${CMAKE_BINARY_DIR}/python"
    LABELS "client;python"
    TIMEOUT 300)
endif()

if(TARGET specprune_python_stubs AND TARGET specprune_server)
  # The Python SDK against the real server binary (started by the test on an ephemeral port).
  add_test(NAME python_integration_tests
           COMMAND /usr/bin/python3 -m pytest -q ${CMAKE_SOURCE_DIR}/tests/python
                   -k "integration" -p no:cacheprovider
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(python_integration_tests PROPERTIES
    ENVIRONMENT "PYTHONPATH=${CMAKE_SOURCE_DIR}/client/python:${CMAKE_BINARY_DIR}/python;SPECPRUNE_SERVER_BIN=$<TARGET_FILE:specprune_server>"
    LABELS "integration;python"
    TIMEOUT 300)
endif()
