# krakenquant image: every `kq` command (data, features, backtest, walk-forward, models, simulator)
# with the pinned dependency set (constraints.txt), run as a non-root user.
# Build: docker build -t krakenquant .
# Run:   docker run --rm -v "$PWD/data:/app/data" krakenquant data check
# Market data is mounted, never baked in: -v /path/to/shared:/shared -e KQ_SHARED=/shared
# Secrets (KRAKEN_API_KEY, KRAKEN_API_SECRET, KQ_SIM_ADMIN_TOKEN) come only from the environment at
# run time; none is written into the image.
# tests/test_dockerfile.py lints this file with hadolint and installs what it installs (the same
# pip command, extras and constraints) into a fresh virtualenv, then runs `kq --help` and a tiny
# walk-forward, so the image's install stays runnable without a Docker engine.
#
# Dashboard: `docker run --rm -p 8770:8770 -e KQ_API_TOKEN -v "$PWD/data:/app/data" krakenquant
#   serve --host 0.0.0.0 --allow-remote` (loopback inside a container is unreachable from the host;
#   the token still guards every endpoint). The first stage builds the dashboard's static export
#   from its committed lockfile; only that export (dashboard/out) reaches the image, not Node.js.
FROM node:20.20.2-bookworm-slim AS dashboard
WORKDIR /dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY dashboard/next.config.mjs dashboard/tsconfig.json ./
COPY dashboard/app ./app
COPY dashboard/components ./components
COPY dashboard/lib ./lib
RUN NEXT_TELEMETRY_DISABLED=1 npm run build

FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/tmp/numba_cache \
    KQ_DATA=/app/data \
    KQ_CONFIGS=/app/configs \
    KQ_STORE=/app/data/market.duckdb \
    KQ_SHARED=/shared \
    KQ_DASHBOARD=/app/dashboard

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# libgomp1: the OpenMP runtime LightGBM's wheel links against.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY engine ./engine
COPY research ./research
COPY live_bridge ./live_bridge
COPY kq ./kq
COPY configs ./configs
RUN pip install --no-cache-dir -c constraints.txt ".[research,live]"
COPY --from=dashboard /dashboard/out ./dashboard

RUN groupadd --system --gid 10001 kq \
    && useradd --system --uid 10001 --gid kq --create-home kq \
    && mkdir -p /app/data \
    && chown kq:kq /app/data
USER 10001:10001
VOLUME ["/app/data"]
ENTRYPOINT ["kq"]
CMD ["--help"]
