# Compositing tier: CPU only; never loads ONNX Runtime.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY lipsync lipsync
COPY inference_service inference_service
COPY compositing_service compositing_service
COPY configs configs

RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1

EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
    CMD ["lipsync", "health", "127.0.0.1:50052"]
CMD ["lipsync", "serve", "compositing", "--config", "/app/configs/compositing.yaml"]
