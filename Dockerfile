# The flotilla image: `docker build -t flotilla:<version> .` at the repository root.
# `flotilla deploy generate` writes a Dockerfile that starts FROM this image and adds a
# configuration; see docs/deploy.md.

# Stand-ins for every crate's targets, beside the real manifests: the dependency layer
# below is rebuilt only when a manifest or the lock file changes, whatever crates exist.
FROM rust:1.95-bookworm AS skeleton
WORKDIR /src
COPY . .
RUN set -eu; mkdir -p /skeleton; cp Cargo.toml Cargo.lock /skeleton/; \
    find crates -name Cargo.toml -exec cp --parents {} /skeleton/ \; ; \
    find crates -type f -name '*.rs' \( -path '*/src/lib.rs' -o -path '*/src/main.rs' \
      -o -path '*/benches/*' -o -path '*/tests/*' -o -path '*/examples/*' \) \
      -exec sh -c 'mkdir -p "/skeleton/$(dirname "$1")" && echo "fn main() { }" > "/skeleton/$1"' _ {} \;

FROM rust:1.95-bookworm AS deps
WORKDIR /src
COPY --from=skeleton /skeleton ./
RUN cargo build --release --locked --bin flotilla

FROM deps AS build
COPY . .
# The sources are newer than the stand-ins whatever their file times say.
RUN find crates -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin flotilla \
    && ./target/release/flotilla --version

FROM debian:bookworm-slim
# postgresql-client: pg_dump and pg_restore for `flotilla backup` on PostgreSQL stores.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1001 --user-group --no-create-home --shell /usr/sbin/nologin flotilla \
    && mkdir -p /data /etc/flotilla && chown 1001:1001 /data
COPY --from=build /src/target/release/flotilla /usr/local/bin/flotilla
USER 1001:1001
WORKDIR /data
ENV FLOTILLA_SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080
# Run with a read-only root file system: only /data (a volume, or an emptyDir) is written.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/livez || exit 1
LABEL org.opencontainers.image.title="flotilla" \
      org.opencontainers.image.source="https://example.invalid/flotilla"
ENTRYPOINT ["/usr/local/bin/flotilla"]
CMD ["serve"]
