# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------
# The image's gcc is all the native code needs: SQLite is bundled by sqlx and
# TLS is rustls (aws-lc-sys builds with cc), so no -dev packages are installed.
FROM rust:1-slim-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the target directory between
# builds, so a source change recompiles only this crate, not its dependencies.
# The binary is copied out in the same step, as the mounted target/ is not
# part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/spool /usr/local/bin/spool

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: outbound HTTPS (http jobs, webhooks); curl: the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 spool \
    && useradd --system --uid 10001 --gid spool --home-dir /data \
       --no-create-home --shell /usr/sbin/nologin spool \
    && mkdir -p /data \
    && chown spool:spool /data

COPY --from=builder /usr/local/bin/spool /usr/local/bin/spool

ENV SPOOL_BIND=0.0.0.0:8080 \
    SPOOL_DATABASE_URL=sqlite:///data/spool.db

# /data holds the SQLite file in embedded mode: mount a volume there (a new
# named volume is seeded from the image's /data, ownership included). No
# VOLUME line: in shared mode (PostgreSQL) it would only leave an unused
# anonymous volume behind each replica.
WORKDIR /data
USER 10001:10001
EXPOSE 8080

# Readiness, not liveness: healthy once it serves and its database answers;
# unhealthy while it drains at shutdown. The port is SPOOL_BIND's.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["sh", "-c", "curl -fsS \"http://127.0.0.1:${SPOOL_BIND##*:}/readyz\" > /dev/null"]

# Spool handles SIGTERM itself: it stops admitting, lets running jobs finish
# within SPOOL_SHUTDOWN_GRACE, hands the rest back to the queue and exits 0.
ENTRYPOINT ["/usr/local/bin/spool"]
