# SpecPrune Serve container image (CPU, Debian 12). docs/operations.md "Container image".
#
# Stages, in file order:
#   runtime-base      Debian runtime libraries only (no compiler), the non-root user, ports,
#                     healthcheck and entrypoint; no SpecPrune files yet.
#   runtime-prebuilt  runtime-base + an install tree built on the host and copied from the build
#                     context (PREBUILT, default .docker-stage/opt/specprune, made by
#                     `cmake --install build --prefix .docker-stage/opt/specprune --strip
#                     --component server`);
#                     deploy/docker_test.sh builds this one: minutes instead of a full compile.
#   build             deploy/setup.sh + deploy/build.sh in the image, installed to /opt/specprune.
#   runtime           (last, so a plain `docker build .` gives it) runtime-base + the tree
#                     compiled in `build`.
# Both runtime stages get the install rules' `server` component: executables, the tokenizer shim and
# models/tiny; the SDK components (`sdk`: C++ headers, libraries, CMake package; `python`) are for
# robot-side machines, not the server image (docs/operations.md "Installing").
# runtime-prebuilt comes before build on purpose: even the classic builder (no BuildKit), which
# runs every stage up to --target, never compiles for `--target runtime-prebuilt`.
#
# BASE is a Debian 12 image. No registry is assumed: deploy/docker_test.sh makes
# specprune/debian:12 with debootstrap + `docker import`. Where a registry is reachable,
# --build-arg BASE=debian:12-slim works the same.
#
#   docker build -t specprune/serve:cpu .                                   # from source
#   docker build --target runtime-prebuilt -t specprune/serve:cpu .         # host-built tree
#   docker run --rm -p 50051:50051 -p 9464:9464 specprune/serve:cpu [--server_flag value ...]
#
# Every server flag (snake_case config keys, `specprune_server --help`) can follow the image
# name; a flag given there overrides the entrypoint's (last one wins), e.g.
# `--model_dir /models/mine` with `-v /host/models/mine:/models/mine:ro`, or
# `--config /etc/specprune/server.json` with the file mounted there (flags override the config
# file, so pass model_dir as a flag, not in the file, to move off the embedded model).
#
# CUDA variant: Dockerfile.cuda (NOT buildable on the dev boxes: no GPU, no registry, no download
# site; tests/dockerfile_cuda_test.py keeps it in step with this file).

ARG BASE=specprune/debian:12

# --- runtime-base ------------------------------------------------------------------------------
FROM ${BASE} AS runtime-base
# The shared libraries the installed executables need (`readelf -d bin/*` NEEDED, mapped with
# `dpkg -S`, plus libsentencepiece0 for lib/libspecprune_spm_shim.so, which the tokenizer
# dlopens), i.e. the runtime halves of setup.sh's -dev packages; prometheus-cpp-pull is
# build-time only (/metrics is the project's own HTTP endpoint).
# libtorch1.13 pulls in OpenCV/FFmpeg through Debian's dependencies; that is most of the image.
RUN export DEBIAN_FRONTEND=noninteractive \
 && apt-get update -qq \
 && apt-get install -y -q --no-install-recommends \
      libtorch1.13 libopenblas0-pthread libtcmalloc-minimal4 \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 \
      libprometheus-cpp-core1.0 \
      libturbojpeg0 libpng16-16 libssl3 libsentencepiece0 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin specprune
ENV PATH=/opt/specprune/bin:${PATH} \
    SPECPRUNE_SPM_SHIM=/opt/specprune/lib/libspecprune_spm_shim.so
EXPOSE 50051 9464
# Through the gRPC health service (grpc.health.v1, overall status); exit 0 only when SERVING.
HEALTHCHECK --interval=10s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/opt/specprune/bin/specprune_cli", "health", "--target", "127.0.0.1:50051"]
STOPSIGNAL SIGTERM
# Exec form: the server is PID 1 and gets docker stop's SIGTERM itself (drains, exits 0; give it
# drain_timeout_seconds + a margin: `docker stop -t 30`).
ENTRYPOINT ["/opt/specprune/bin/specprune_server", "--host", "0.0.0.0", \
            "--model_dir", "/opt/specprune/share/specprune/models/tiny"]

# --- runtime-prebuilt ----------------------------------------------------------------------------
FROM runtime-base AS runtime-prebuilt
ARG PREBUILT=.docker-stage/opt/specprune
COPY ${PREBUILT} /opt/specprune
# Fails the build when a runtime library is missing from the list above.
RUN ! ldd /opt/specprune/bin/* /opt/specprune/lib/*.so | grep 'not found' \
 && test -f /opt/specprune/share/specprune/models/tiny/config.json \
 && test -f "${SPECPRUNE_SPM_SHIM}"
USER specprune:specprune

# --- build -------------------------------------------------------------------------------------
FROM ${BASE} AS build
# The commit reported by specprune_build_info (.git is not in the build context).
ARG GIT_COMMIT=unknown
WORKDIR /src
COPY . /src
RUN deploy/setup.sh \
 && deploy/build.sh -DSPECPRUNE_BUILD_TESTS=OFF -DSPECPRUNE_GIT_COMMIT=${GIT_COMMIT} \
 && cmake --install build --prefix /opt/specprune --strip --component server

# --- runtime (default: last stage) -------------------------------------------------------------
FROM runtime-base AS runtime
COPY --from=build /opt/specprune /opt/specprune
RUN ! ldd /opt/specprune/bin/* /opt/specprune/lib/*.so | grep 'not found' \
 && test -f /opt/specprune/share/specprune/models/tiny/config.json \
 && test -f "${SPECPRUNE_SPM_SHIM}"
USER specprune:specprune
