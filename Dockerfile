# The `bus` image: one binary for every service of the stack, plus nginx
# for the gateway. The binary is built on the host first
# (`cargo build --release`); BASE_IMAGE must be Debian bookworm or newer
# (the binary links against its glibc).
#
#   docker build --build-arg BASE_IMAGE=bus-base:bookworm -t bus:latest .
#
# Where no registry can be reached, scripts/build-base-image builds
# bus-base:bookworm offline (debootstrap, with nginx).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN if ! command -v nginx >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends nginx-light ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY target/release/bus /usr/local/bin/bus
RUN for name in api-provider-events api-provider-containers integration-containers \
      integration-docker integration-podman containers events operator-token dev; do \
      ln -s bus "/usr/local/bin/bus-$name"; \
    done
COPY deploy/nginx.conf /etc/bus/nginx.conf
COPY config.toml /etc/bus/config.toml
ENTRYPOINT ["bus"]
