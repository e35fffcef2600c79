# syntax=docker/dockerfile:1
# The service on the CPU: Python 3.11 slim, the `cpu` and `grpc` extras (ONNX Runtime and the gRPC server;
# no torch), the bundled models, a non-root user. Runs with a read-only root filesystem: nothing is written
# at run time.
#   docker build -f deploy/docker/service-cpu.Dockerfile -t gan-serving:cpu .
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/venv && /opt/venv/bin/pip install ".[cpu,grpc]"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GAN_HOST=0.0.0.0 \
    GAN_PORT=8000 \
    GAN_MODEL_DIR=/app/models \
    GAN_DEVICE=cpu \
    GAN_DRAIN_TIMEOUT_S=20
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gan \
    && mkdir /models && chown 10001:10001 /models  # mount point of the shared model volume
COPY --from=build /opt/venv /opt/venv
COPY models /app/models
WORKDIR /app
USER 10001:10001
# 8000: HTTP (native API and Open Inference Protocol); 8081: the Open Inference Protocol over gRPC,
# served only when GAN_GRPC_PORT=8081 is set (k8s/kserve sets it).
EXPOSE 8000 8081
# SIGTERM drains: /readyz turns 503, accepted requests finish within GAN_DRAIN_TIMEOUT_S (20 s), then exit.
# Give the container longer than that to stop (compose: stop_grace_period 30s; k8s: 45 s).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["python", "-m", "service.healthcheck"]
CMD ["python", "-m", "service"]
