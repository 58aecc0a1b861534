# Build cohort and ship it in a slim image. docker-compose.yml runs this one image three
# times: cohort itself, and the stable and canary demo upstreams (`cohort demo-upstream`).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin cohort

FROM debian:bookworm-slim
COPY --from=build /src/target/release/cohort /usr/local/bin/cohort
# /etc/cohort: where the config is mounted (read-only is fine: changes then go through the
# orchestrator, and the kill switch needs no write). /var/lib/cohort: the default
# state_dir, owned by cohort's user so rollbacks can be remembered there.
RUN mkdir -p /etc/cohort /var/lib/cohort && chown 65532:65532 /var/lib/cohort
# A fixed, numeric non-root user (the "nonroot" ids of distroless images), so that
# Kubernetes' runAsNonRoot can verify it without a passwd entry. Nothing in the image
# needs root: the ports are above 1024 and the root filesystem can be read-only.
USER 65532:65532
EXPOSE 8080 9901
# The image has no curl: cohort is its own client. `cohort status` reads GET /routes
# from the admin listener, so this checks that the process answers there with a valid
# config loaded (liveness, as /healthz; the orchestrator's readiness probe should use
# /readyz). It assumes admin.address on port 9901 reachable from loopback, as the
# shipped configs have it; the demo-upstream services of docker-compose turn it off.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/cohort", "status", "--admin", "http://127.0.0.1:9901"]
ENTRYPOINT ["/usr/local/bin/cohort"]
CMD ["run", "-c", "/etc/cohort/cohort.toml"]
