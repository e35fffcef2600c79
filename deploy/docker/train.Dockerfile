# syntax=docker/dockerfile:1
# Training: torch 2.13.0 from PyPI (its Linux wheels bring CUDA; the CPU is used when no GPU is visible),
# Fashion-MNIST from Debian's package, ONNX Runtime for the export's parity check. Exports go to the
# mounted model directory (/models) that the service reads.
#   docker build -f deploy/docker/train.Dockerfile -t gan-serving:train .
#   docker run --gpus all -v "$PWD/models:/models" gan-serving:train \
#       train --preset cgan --steps 12000 --run-dir /runs/cgan
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin gan \
    && mkdir -p /models /runs && chown gan:gan /models /runs
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN pip install ".[train,cpu]"
COPY deploy/docker/train-and-export.sh /usr/local/bin/train-and-export
USER 10001:10001
VOLUME ["/models", "/runs"]
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]
