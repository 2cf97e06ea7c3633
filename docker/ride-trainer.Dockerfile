# The trainer image: `ride-trainer` linked against the PyPI torch==2.11.0
# wheel (CUDA 13 build), the configs under /opt/ride/configs (where the
# operator's pods look for them), NCCL-capable GPU nodes need the NVIDIA
# container runtime. Build from the repository root:
#   docker build -f docker/ride-trainer.Dockerfile -t ghcr.io/ride-on-cluster/ride-trainer:0.1.0 .
# Not built on the development machines (no Docker daemon there); see docs/status.md.
FROM rust:1.95-bookworm AS build
# libjpeg-turbo is linked statically into the binary; the runtime stage needs no copy.
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv libjpeg62-turbo-dev && rm -rf /var/lib/apt/lists/*
# The binary's rpath points into this venv, so the runtime stage keeps the same path.
RUN python3 -m venv /opt/ride/venv && /opt/ride/venv/bin/pip install --no-cache-dir torch==2.11.0 numpy
WORKDIR /src
COPY . .
ENV LIBTORCH_USE_PYTORCH=1 PATH=/opt/ride/venv/bin:$PATH
RUN cargo build --release --locked -p ride-trainer --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/ride/venv /opt/ride/venv
COPY --from=build /src/target/release/ride-trainer /usr/local/bin/ride-trainer
COPY configs /opt/ride/configs
RUN useradd --uid 1000 --create-home ride
USER 1000
WORKDIR /home/ride
ENTRYPOINT ["ride-trainer"]
