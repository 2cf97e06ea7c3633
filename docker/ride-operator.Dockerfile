# The operator image: `ride-operator` (and the `ride` CLI) on distroless.
# Build from the repository root:
#   docker build -f docker/ride-operator.Dockerfile -t ghcr.io/ride-on-cluster/ride-operator:0.1.0 .
# The same contents as `scripts/images.sh build` (no daemon needed; docs/operations.md).
# This file itself has not been built on the development machines (no daemon there).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The operator crate does not link libtorch, so this build needs no torch wheel.
RUN cargo build --release --locked -p ride-operator --bins

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ride-operator /src/target/release/ride /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["ride-operator"]
