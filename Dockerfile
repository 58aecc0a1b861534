# Build cohort and ship it in a slim image. Used by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin cohort

FROM debian:bookworm-slim
COPY --from=build /src/target/release/cohort /usr/local/bin/cohort
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/cohort"]
CMD ["run", "-c", "/etc/cohort/cohort.toml"]
