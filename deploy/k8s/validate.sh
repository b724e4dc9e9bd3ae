#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests (deploy/k8s/) and the compose stack
# (deploy/compose.yaml): strict schema validation against the Kubernetes and prometheus-operator
# schemas vendored from npm (schema/README.md), "one source of the numbers" across server.json,
# the server's defaults, the manifests, the gateway, compose, Prometheus and the Dockerfile,
# `docker-compose config`, and a self-test that broken copies are rejected.
# No cluster, no Docker daemon, no network. deploy/k8s/README.md.
#
#   deploy/k8s/validate.sh [--server build/bin/specprune_server] [--only k8s|compose|all] [--fix]
#
# --server: read the config keys and defaults from the binary (else from server/*.{h,cc}).
# --fix:    re-copy deploy/gateway/nginx.conf into deploy/k8s/common/gateway/ first.
# Needs python3-yaml, node (Debian nodejs) and docker-compose (deploy/setup.sh installs them);
# kubectl, when installed, adds the rendered kustomize output (without it the check still runs and
# passes, on the files and the configMapGenerator's ConfigMaps). Exit 0 pass, 1 fail, 77 skip (a
# tool is missing). ctest: k8s_manifests, compose_config (tests/deploy_tests.cmake).
set -euo pipefail
exec /usr/bin/python3 "$(dirname "$0")/validate_manifests.py" "$@"
