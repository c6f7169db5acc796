# syntax=docker/dockerfile:1
#
# pgcable: build with `docker build -t pgcable .`, run with
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... -e DEVISE_JWT_SECRET_KEY=... pgcable
# Other commands: `docker run --rm -e DATABASE_URL=... pgcable check` (or `triggers install`).
# Settings are environment variables; see `pgcable serve --help`.

# --- build -------------------------------------------------------------------------------------
# Same Debian release as the runtime image, so the binary links against the same glibc.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY triggers ./triggers
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgcable \
    && cp target/release/pgcable /usr/local/bin/pgcable

# --- runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgcable \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pgcable
COPY --from=build /usr/local/bin/pgcable /usr/local/bin/pgcable
# Not root: the user `pgcable` created above (numeric, so Kubernetes' runAsNonRoot can verify it).
USER 10001:10001
# Listen on every interface inside the container; publish the port to choose who can reach it.
ENV PGCABLE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["pgcable"]
CMD ["serve"]
