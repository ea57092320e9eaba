# vmla-server image: build with the CUDA toolkit, run on the CUDA runtime with only runtime libraries.
#
#   docker build -t vmla:latest .
#   docker run --gpus 1 -p 8080:8080 -p 8081:8081 vmla:latest
#
# The HTTP API, web client, /healthz, /readyz and /metrics are on 8080; WebSocket streams on 8081.
# Both stages use Ubuntu 22.04 so the runtime library versions match what the builder linked.
# CUDA_ARCH selects the GPU code generated (90 = Hopper: H100/H200).

ARG CUDA_VERSION=12.4.1

# ---- build ---------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS builder
ARG CUDA_ARCH=90
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      libopenblas-dev libjansson-dev libmicrohttpd-dev libwebsockets-dev \
      libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libx264-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# VMLA_SERVER=ON turns a missing server dependency into a configure error instead of a skip.
RUN cmake -S . -B build -G Ninja -DVMLA_CUDA=ON -DVMLA_SERVER=ON -DCMAKE_BUILD_TYPE=Release \
          -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH} \
 && cmake --build build \
 && test -x build/vmla-server

# ---- run -----------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive
# Runtime halves of the build dependencies (Ubuntu 22.04 package names), plus curl for HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libopenblas0 libjansson4 libmicrohttpd12 libwebsockets16 \
      libavcodec58 libavformat58 libavutil56 libswscale5 libx264-163 \
      curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 vmla \
 && useradd --system --uid 10001 --gid vmla --home-dir /opt/vmla --shell /usr/sbin/nologin vmla

WORKDIR /opt/vmla
COPY --from=builder /src/build/vmla-server /opt/vmla/vmla-server
COPY web-client/ /opt/vmla/web-client/
COPY models/ /opt/vmla/models/
RUN chown -R root:root /opt/vmla && chmod -R a+rX /opt/vmla

USER vmla
EXPOSE 8080 8081
# /healthz answers as soon as the process serves; readiness (/readyz) is for load balancers.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# The server drains live streams on SIGTERM (docker stop -t 60 gives it time to finish).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/vmla/vmla-server"]
CMD ["--model", "/opt/vmla/models/vmla-tiny.safetensors", "--preset", "tiny", "--host", "0.0.0.0", \
     "--port", "8080", "--ws-port", "8081", "--web-root", "/opt/vmla/web-client"]
