# The container image test (deploy/docker_test.sh): opt-in, -DSPECPRUNE_DOCKER_TESTS=ON, run with
#   ctest --test-dir build -L docker --output-on-failure
# Needs root (or a running dockerd), apt access for docker.io/debootstrap on the first run, and
# the build's bin/ and python/ (it stages `cmake --install` of this build into the image).
# Exit 77 (docker cannot run here) is a skip. docs/operations.md "Container image".
if(NOT SPECPRUNE_DOCKER_TESTS OR NOT TARGET specprune_server OR NOT TARGET specprune_python_stubs)
  return()
endif()
add_test(NAME docker_image
         COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/docker_test.sh ${CMAKE_BINARY_DIR}
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(docker_image PROPERTIES
  LABELS docker
  SKIP_RETURN_CODE 77
  TIMEOUT 3600
  RUN_SERIAL TRUE)
