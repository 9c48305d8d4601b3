# krakenquant image: the engine, research stack and live bridge with the pinned dependency set.
# Build: docker build -t krakenquant .      Run: docker run --rm -v $PWD/data:/app/data krakenquant kq data check
# Market data is mounted, never baked in: -v /path/to/shared:/shared -e KQ_SHARED=/shared
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba_cache \
    KQ_STORE=/app/data/market.duckdb

WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends make gcc g++ && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml constraints.txt README.md ./
COPY engine ./engine
COPY research ./research
COPY live_bridge ./live_bridge
COPY kq ./kq
COPY configs ./configs
RUN pip install --no-cache-dir -c constraints.txt ".[live]"

# Secrets (KRAKEN_API_KEY / KRAKEN_API_SECRET) come only from the environment at run time.
RUN useradd --create-home kq && mkdir -p /app/data && chown kq /app/data
USER kq
ENTRYPOINT ["kq"]
CMD ["--help"]
