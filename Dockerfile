# One image for every featurestream process (worker, API, batch jobs); see compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY feature_store ./feature_store
COPY streams ./streams
COPY serving ./serving
COPY featurestream ./featurestream
RUN pip install . \
 && useradd --create-home --uid 10001 featurestream \
 && mkdir -p /data \
 && chown featurestream /data

USER featurestream
ENV FEATURESTREAM_DATA_DIR=/data/offline \
    FEATURESTREAM_REGISTRY=/data/registry.db \
    FEATURESTREAM_LOG_JSON=true
EXPOSE 8000
CMD ["featurestream", "--help"]
