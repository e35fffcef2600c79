# syntax=docker/dockerfile:1
# The service on an NVIDIA GPU: CUDA 13 + cuDNN 9 runtime base, the `gpu` extra (onnxruntime-gpu with its
# CUDA and cuDNN wheels) and the `grpc` extra, GAN_DEVICE=cuda: start-up fails loudly if the CUDA provider
# cannot be used.
# Needs the NVIDIA container toolkit on the host (compose: the `gpu` profile; k8s: the `gpu` overlay).
#   docker build -f deploy/docker/service-gpu.Dockerfile -t gan-serving:gpu .
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install ".[gpu,grpc]"

FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gan \
    && mkdir /models && chown 10001:10001 /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GAN_HOST=0.0.0.0 \
    GAN_PORT=8000 \
    GAN_MODEL_DIR=/app/models \
    GAN_DEVICE=cuda \
    GAN_DRAIN_TIMEOUT_S=20
COPY --from=build /opt/venv /opt/venv
COPY models /app/models
WORKDIR /app
USER 10001:10001
# 8000: HTTP (native API and Open Inference Protocol); 8081: the Open Inference Protocol over gRPC,
# served only when GAN_GRPC_PORT=8081 is set (k8s/kserve sets it).
EXPOSE 8000 8081
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 CMD ["python", "-m", "service.healthcheck"]
CMD ["python", "-m", "service"]
