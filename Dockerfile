# tripline: a two-stage build. The first stage compiles the release binary
# (RocksDB's C++ needs a compiler and libclang); the second holds only the
# binary, the shipped rules and models, and a configuration.
#
#   docker build -t tripline .
#   docker run --rm -e TRIPLINE__KAFKA__BROKERS=broker:9092 -p 8080:8080 tripline
#   docker run --rm -p 8080:8080 tripline demo --config /etc/tripline/tripline.toml --keep-running
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && cp target/release/tripline /usr/local/bin/tripline

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tripline --create-home tripline
COPY --from=build /usr/local/bin/tripline /usr/local/bin/tripline
COPY rules /etc/tripline/rules
COPY models /etc/tripline/models
COPY examples /var/lib/tripline/examples
COPY deploy/tripline.toml /etc/tripline/tripline.toml
USER 10001
WORKDIR /var/lib/tripline
# Listen beyond the container's loopback; every setting can be overridden so.
ENV TRIPLINE__API__LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tripline"]
CMD ["serve", "--config", "/etc/tripline/tripline.toml"]
