# syntax=docker/dockerfile:1
# One multi-stage build for every binary of the workspace:
#   docker build --build-arg BIN=msa-operator -t msa-operator .
# The result is a small distroless image running as the non-root user 65532.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG BIN=msa-operator
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin "${BIN}" \
 && cp "target/release/${BIN}" /app

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /app /app
USER 65532:65532
ENTRYPOINT ["/app"]
