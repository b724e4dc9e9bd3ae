# Deployment manifests (deploy/k8s/validate.sh, deploy/k8s/README.md): offline, no cluster, no Docker
# daemon, no build needed (the server's config keys and defaults are read from
# server/server_config.{h,cc}; `validate.sh --server BIN` reads them from a binary instead, by hand).
#  - k8s_manifests: every object in deploy/k8s/ (and `kubectl kustomize` of cpu/ and gpu/ when
#    kubectl is installed; without it a note is printed and the check still runs) strictly against
#    the vendored Kubernetes/ServiceMonitor schemas (node), the "one source of the numbers" checks
#    across server.json, the server's defaults, the manifests, the gateway, compose, Prometheus and
#    the Dockerfile, and the self-tests that broken copies are rejected.
#  - compose_config: `docker-compose config` on deploy/compose.yaml, and that a broken copy fails.
# Skipped (exit 77) when node (Debian nodejs) or docker-compose is missing (deploy/setup.sh).
add_test(NAME k8s_manifests
         COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/k8s/validate.sh --only k8s
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
add_test(NAME compose_config
         COMMAND bash ${CMAKE_SOURCE_DIR}/deploy/k8s/validate.sh --only compose
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(k8s_manifests compose_config PROPERTIES
  LABELS deploy
  TIMEOUT 120
  SKIP_RETURN_CODE 77)
# Dockerfile.cuda cannot be built here (no registry, no GPU): tests/dockerfile_cuda_test.py keeps it
# in step with the CPU Dockerfile that docker_image builds (runtime libraries, user, ports,
# healthcheck, entrypoint, setup.sh without libtorch-dev) and rejects broken copies.
add_test(NAME dockerfile_cuda_in_step
         COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/dockerfile_cuda_test.py
                 ${CMAKE_SOURCE_DIR})
set_tests_properties(dockerfile_cuda_in_step PROPERTIES LABELS deploy TIMEOUT 60)
