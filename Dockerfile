# Multi-stage build: compile with the Rust toolchain, run on a slim image as a non-root user.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin weft

FROM debian:bookworm-slim
# iptables: the same image runs `weft init-iptables` as the pod's init container
# (both its nft and legacy tools). uid 10001 is the proxy uid `weft inject`
# assumes (runAsUser, and the uid whose connections capture lets through).
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home weft
COPY --from=build /src/target/release/weft /usr/local/bin/weft
COPY config/weft.yaml /etc/weft/weft.yaml
USER 10001
ENV WEFT_CONFIG=/etc/weft/weft.yaml
# Listener and admin ports of the example config.
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9901/ready || exit 1
ENTRYPOINT ["/usr/local/bin/weft"]
CMD ["run"]
