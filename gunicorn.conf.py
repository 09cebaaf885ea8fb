"""Gunicorn settings for the API: `gunicorn -c gunicorn.conf.py`.

`-b HOST:PORT` overrides the bind.

Configuration of the service itself comes from the environment
(DATABASE_URL, BROKER_URL, LISTENERS_CONFIG, QUEUE_PREFIX); see the README.
"""

import multiprocessing
import os

wsgi_app = "cqrs_warehouse.web:create_app()"
bind = [os.environ.get("BIND", "127.0.0.1:8000")]
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 4))
# The app is built in each worker after the fork: no connection is shared.
preload_app = False
graceful_timeout = 30
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
control_socket_disable = True
