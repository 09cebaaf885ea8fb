"""What `dramatiq cqrs_warehouse.worker` imports: the broker with the drain and every listener.

This module is the wiring point of the worker processes, so it bootstraps on
import (Dramatiq needs the actors declared before it starts consuming). It
reads the settings and listeners.yaml; it connects to nothing until the
worker runs.
"""

import sys

from dramatiq.middleware.prometheus import Prometheus

from . import logs
from .bootstrap import bootstrap
from .messaging.errors import MessagingError
from .settings import Settings

logs.configure()
try:
    runtime = bootstrap(Settings.from_env())
except MessagingError as error:
    # One clear line instead of an import traceback from dramatiq.
    print(f"cqrs-warehouse worker: {error}", file=sys.__stderr__, flush=True)
    raise SystemExit(2) from None
broker = runtime.broker
# Metrics of every worker process, served by dramatiq on dramatiq_prom_port (9191).
broker.add_middleware(Prometheus())
