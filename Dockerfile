# syntax=docker/dockerfile:1
# The opsci-app image: `docker build -t opsci-app .` from the repository root
# (the opsci-app service of docker-compose.yml).
#
#   docker run --rm opsci-app --help
#   docker run --rm -e KAFKA_BROKERS=kafka:9092 opsci-app run

ARG RUST_IMAGE=rust:1.91-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- Stage 1: build the release binary -------------------------------------
FROM ${RUST_IMAGE} AS builder

# libclang and clang: bindgen (rocksdb); cmake, pkg-config, OpenSSL and zlib
# headers: librdkafka, built from source by rdkafka-sys.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libclang-dev clang cmake pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The registry and the target directory are build caches, kept between
# builds (RocksDB's C++ code alone takes minutes); the binary is copied out
# of the cache so that the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release -p opsci-app --locked \
 && install -D -m 0755 target/release/opsci-app /usr/local/bin/opsci-app

# ---- Stage 2: the runtime image --------------------------------------------
FROM ${RUNTIME_IMAGE}

# libssl3 and zlib1g: librdkafka; libstdc++6: RocksDB; ca-certificates: TLS
# to brokers; curl: the container's health check (GET /health).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates libssl3 zlib1g libstdc++6 curl \
 && rm -rf /var/lib/apt/lists/*

# An unprivileged user owning the state directory.
RUN groupadd --system --gid 10001 opsci \
 && useradd --system --uid 10001 --gid opsci --home-dir /var/lib/opsci --no-create-home \
        --shell /usr/sbin/nologin opsci \
 && install -d -o opsci -g opsci -m 0750 /var/lib/opsci

COPY --from=builder /usr/local/bin/opsci-app /usr/local/bin/opsci-app

# Local state (RocksDB stores): one volume per container; the stores are
# restored from their changelog topics when it is empty.
ENV STATE_DIR=/var/lib/opsci \
    HTTP_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
VOLUME ["/var/lib/opsci"]
WORKDIR /var/lib/opsci
USER opsci

# /health and /metrics.
EXPOSE 8080

ENTRYPOINT ["opsci-app"]
CMD ["run"]
