# The API by default; the worker with:  docker run IMAGE dramatiq cqrs_warehouse.worker
# Configuration comes from the environment: DATABASE_URL, BROKER_URL,
# LISTENERS_CONFIG, QUEUE_PREFIX... (see the README).

# Pinned by version tag (update deliberately).
FROM python:3.11.10-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11.10-slim-bookworm
RUN useradd --system --create-home --uid 10001 app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Owned by root, readable by all: the runtime user cannot change what it runs.
COPY config ./config
COPY schemas ./schemas
COPY gunicorn.conf.py ./
COPY docker/entrypoint.sh /usr/local/bin/cqrs-warehouse-entrypoint
COPY docker/healthcheck.py /usr/local/lib/cqrs-warehouse/healthcheck.py
RUN chmod 0755 /usr/local/bin/cqrs-warehouse-entrypoint \
 && chmod -R a+rX,go-w /app /usr/local/lib/cqrs-warehouse
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BIND=0.0.0.0:8000
USER app
EXPOSE 8000 9191
# The API's /readyz, or the workers' metrics port in a worker container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/cqrs-warehouse/healthcheck.py"]
# Gives the workers and dramatiq's metrics exporter one fresh dramatiq_prom_db.
ENTRYPOINT ["cqrs-warehouse-entrypoint"]
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
