# The Cascade focus as a small, non-root container image.
#
#   docker build -t cascade .
#   docker run --rm -v $PWD/cascade.toml:/etc/cascade/cascade.toml:ro \
#       -v cascade-state:/var/lib/cascade -p 7882:7882/udp -p 9090:9090 cascade
#
# In the mounted cascade.toml set `[http] listen = "0.0.0.0:9090"` (the default listens on
# loopback only), `[matrix] state_dir = "/var/lib/cascade"`, a fixed `[rtc] event_loops` (one UDP
# port each from udp_port; publish them all) and `[rtc] public_ips` to the address clients reach.

# ---- build: the release binary only ----
FROM rust:1.95-bookworm AS build
# aws-lc-sys (rustls' crypto provider, via reqwest) builds its C code with cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cascade \
    && install -D -m 0755 target/release/cascade /out/cascade \
    && mkdir -p /out/state /out/config

# ---- runtime: glibc, CA certificates, no shell, no package manager ----
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/cascade /usr/local/bin/cascade
COPY --from=build --chown=10001:10001 /out/state /var/lib/cascade
COPY --from=build --chown=10001:10001 /out/config /etc/cascade
USER 10001:10001
# The configuration file and the state directory (sync token, device session) are volumes.
VOLUME ["/etc/cascade", "/var/lib/cascade"]
# Media: event loop i listens on udp_port + i (7882 with the defaults); HTTP: health and metrics.
EXPOSE 7882/udp 9090/tcp
ENTRYPOINT ["/usr/local/bin/cascade"]
CMD ["--config", "/etc/cascade/cascade.toml"]
