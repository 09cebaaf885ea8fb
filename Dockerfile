# The API by default; the worker with:  docker run IMAGE dramatiq cqrs_warehouse.worker
# Configuration comes from the environment: DATABASE_URL, BROKER_URL,
# LISTENERS_CONFIG, QUEUE_PREFIX (see the README).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --create-home --uid 10001 app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=app:app config ./config
COPY --chown=app:app schemas ./schemas
COPY --chown=app:app gunicorn.conf.py ./
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BIND=0.0.0.0:8000
USER app
EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
