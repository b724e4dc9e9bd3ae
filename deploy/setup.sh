#!/usr/bin/env bash
# Installs every Debian package SpecPrune Serve needs to build, test and serve.
# Idempotent and non-interactive: packages already installed are skipped without touching apt.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev
  libtorch-dev libopenblas0-pthread
  libgoogle-perftools-dev  # tcmalloc_minimal, the model executables' allocator (CMakeLists.txt)
  prometheus-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  libsentencepiece-dev sentencepiece
  libturbojpeg0-dev libpng-dev
  python3-grpcio python3-protobuf python3-numpy python3-pytest
  python3-venv python3-pip python3-setuptools python3-wheel  # tests/install_test.sh (pyproject)
  python3-matplotlib  # deploy/grafana/render_panels.py
  prometheus
  nginx-light python3-yaml  # deploy/gateway/ (gateway_test.py, config_check.py)
  nodejs docker-compose  # deploy/k8s/validate.sh: schema check (node), `docker-compose config`
  clang libclang-rt-14-dev  # .ci/fuzz.sh, .ci/asan.sh: libFuzzer, ASan + UBSan (fuzz/README.md)
)

# SPECPRUNE_SETUP_SKIP: space-separated packages to leave out (Dockerfile.cuda: libtorch-dev, whose
# place PyTorch's CUDA LibTorch takes). `setup.sh --print` prints the list and installs nothing.
if [ -n "${SPECPRUNE_SETUP_SKIP:-}" ]; then
  kept=()
  for p in "${PACKAGES[@]}"; do
    case " ${SPECPRUNE_SETUP_SKIP} " in *" $p "*) ;; *) kept+=("$p") ;; esac
  done
  PACKAGES=("${kept[@]}")
fi
if [ "${1:-}" = "--print" ]; then
  printf '%s\n' "${PACKAGES[@]}"
  exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "setup: done"
