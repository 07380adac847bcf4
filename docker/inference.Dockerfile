# Inference tier: CUDA runtime with cuDNN 9 and onnxruntime-gpu (CUDA 12 build).
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY lipsync lipsync
COPY inference_service inference_service
COPY compositing_service compositing_service
COPY configs configs

# onnxruntime (CPU) comes with the project; onnxruntime-gpu replaces it in this image.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall -y onnxruntime \
    && /opt/venv/bin/pip install --no-cache-dir "onnxruntime-gpu>=1.19"
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1

EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s \
    CMD ["lipsync", "health", "127.0.0.1:50051"]
CMD ["lipsync", "serve", "inference", "--config", "/app/configs/inference.yaml"]
