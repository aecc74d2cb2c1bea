# syntax=docker/dockerfile:1
#
# One image for all of ringer: the five services and the operators' CLI.
#
#   docker build -t ringer:local .
#   docker run --rm ringer:local ringer-admin --help
#
# Stages:
#   skeleton  copies the workspace manifests (Cargo.toml, Cargo.lock, build.rs)
#             and replaces every target's source with an empty stub;
#   builder   compiles the dependencies against the skeleton (a layer that is
#             reused as long as no manifest changes), then the real sources;
#   runtime   debian slim + CA certificates + busybox, non-root.
#
# The skeleton is derived from whatever workspace members exist, so adding a
# crate needs no change here. Migrations are embedded into the binaries at
# compile time (sqlx::migrate!), so the runtime image has no migrations dir.
# No secret is baked in: everything comes from the environment at run time.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS skeleton
WORKDIR /src
COPY . .
# Keep manifests and build scripts; stub every target root (lib, bins, tests,
# benches, examples) so cargo resolves and builds the same dependency graph.
RUN set -eu; \
    mkdir -p /skeleton; \
    find . -path ./target -prune -o -type f \
        \( -name Cargo.toml -o -name Cargo.lock -o -name build.rs \
           -o -name rust-toolchain.toml -o -path './.cargo/config.toml' \) -print \
      | while read -r f; do mkdir -p "/skeleton/$(dirname "$f")"; cp "$f" "/skeleton/$f"; done; \
    find . -path ./target -prune -o -type f -name '*.rs' \
        \( -path '*/src/lib.rs' -o -path '*/src/main.rs' -o -path '*/src/bin/*' \
           -o -path '*/tests/*' -o -path '*/benches/*' -o -path '*/examples/*' \) -print \
      | while read -r f; do \
          case "$f" in */build.rs) continue ;; esac; \
          mkdir -p "/skeleton/$(dirname "$f")"; \
          case "$f" in */src/lib.rs) : > "/skeleton/$f" ;; *) echo 'fn main() {}' > "/skeleton/$f" ;; esac; \
        done

# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# cmake/pkg-config: build scripts of the TLS stack (aws-lc-sys) may want them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
ARG PACKAGES="-p ringer-api -p ringer-dialer -p ringer-extractor -p ringer-billing -p ringer-webhook-dispatcher -p ringer-admin"

# 1. Dependencies only: this layer is cached until a Cargo.toml/Cargo.lock changes.
COPY --from=skeleton /skeleton/ ./
RUN cargo fetch --locked \
 && cargo build --release --locked ${PACKAGES} \
 && rm -rf target/release/.fingerprint/ringer-* \
           target/release/deps/ringer* target/release/deps/libringer* \
           target/release/ringer-*

# 2. The real sources. Touch them so cargo never trusts a stub's fingerprint
#    (COPY keeps the files' original, possibly older, mtimes).
COPY . .
RUN find . -path ./target -prune -o -type f \( -name '*.rs' -o -name '*.sql' \) -exec touch {} + \
 && cargo build --release --locked ${PACKAGES} \
 && mkdir -p /out \
 && for b in ringer-api ringer-dialer ringer-extractor ringer-billing ringer-webhook-dispatcher ringer-admin; do \
        cp "target/release/$b" /out/; \
    done

# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: HTTPS to the carrier, the LLM endpoint and webhook receivers.
# busybox: a ~1 MB single binary whose `wget` serves the docker-compose
#   healthchecks (`busybox wget -qO- http://127.0.0.1:PORT/readyz`) and whose
#   `sleep` serves the api's Kubernetes preStop hook. Debian's curl would pull
#   libcurl and a dozen libraries (LDAP, SSH, RTMP, Kerberos…) for a loopback
#   HTTP GET; Kubernetes probes use httpGet and need neither.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates busybox \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ringer \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ringer

COPY --from=builder /out/ /usr/local/bin/

# Numeric so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
ENV RUST_LOG=info \
    RINGER_LOG_FORMAT=json
# api 8080, dialer 8081, extractor 8082, billing 8083, webhook-dispatcher 8084
# (each binary reads RINGER_HTTP_ADDR; set 0.0.0.0:<port> in a container).
EXPOSE 8080 8081 8082 8083 8084
# Pick the binary with the command: ringer-api (default), ringer-dialer,
# ringer-extractor, ringer-billing, ringer-webhook-dispatcher, ringer-admin.
CMD ["ringer-api"]
