# The trainer image for users with Docker: the same contents as
# `scripts/images.sh build` (which needs no daemon; see docs/operations.md):
# `ride-trainer` with its rpath on /opt/ride/python/torch/lib, libtorch and
# the CUDA/cuDNN/NCCL libraries of the PyPI torch==2.11.0 wheel in the
# wheel's layout (no Python interpreter), configs under /opt/ride/configs,
# user 1000, and /tmp as the only writable path. Build from the repository root:
#   docker build -f docker/ride-trainer.Dockerfile -t ghcr.io/ride-on-cluster/ride-trainer:0.1.0 .
# This file itself has not been built on the development machines (no daemon there).
FROM rust:1.95-bookworm AS build
# libjpeg-turbo is linked statically into the binary; the runtime stage needs no copy.
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv libjpeg62-turbo-dev patchelf \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /venv && /venv/bin/pip install --no-cache-dir torch==2.11.0
WORKDIR /src
COPY . .
ENV LIBTORCH_USE_PYTORCH=1 PATH=/venv/bin:$PATH
RUN cargo build --release --locked -p ride-trainer --bins \
    && patchelf --set-rpath /opt/ride/python/torch/lib target/release/ride-trainer
# The wheel's libraries in its own layout (libtorch_cuda's rpaths are relative).
RUN site=$(/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && mkdir -p /out/torch/lib /out/nvidia \
    && find "$site/torch/lib" -maxdepth 1 -name '*.so*' ! -name libtorch_python.so -exec cp -L {} /out/torch/lib/ \; \
    && cd "$site/nvidia" && find . -path '*/lib/*' -name '*.so*' -exec cp -L --parents {} /out/nvidia/ \;

# glibc, libgcc and libstdc++, CA certificates.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out /opt/ride/python
COPY --from=build /src/target/release/ride-trainer /usr/local/bin/ride-trainer
COPY configs /opt/ride/configs
USER 1000:1000
ENV HOME=/tmp
WORKDIR /tmp
VOLUME /tmp
ENTRYPOINT ["/usr/local/bin/ride-trainer"]
CMD ["--help"]
