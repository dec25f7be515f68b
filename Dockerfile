# weir in a container: a build stage with the Rust toolchain, then a slim
# runtime with the binary, the example jobs and a non-root user.
#
#   docker build -t weir .
#   docker run --rm weir run /etc/weir/jobs --brokers kafka:9092 \
#       --metrics-addr 0.0.0.0:9898 --data s3://bucket/weir
#
# Not built on the development machines (no container engine there); the
# README's Deployment section says what was checked.

FROM rust:1.95-bookworm AS build
# librdkafka (built from source by rdkafka-sys) needs these besides the toolchain.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin weir

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/weir --create-home weir
COPY --from=build /src/target/release/weir /usr/local/bin/weir
COPY jobs /etc/weir/jobs
USER 10001:10001
WORKDIR /var/lib/weir
# /metrics and /healthz; weir serves them on loopback unless told otherwise.
EXPOSE 9898
ENTRYPOINT ["/usr/local/bin/weir"]
CMD ["run", "/etc/weir/jobs", "--metrics-addr", "0.0.0.0:9898"]
