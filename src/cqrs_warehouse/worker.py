"""What `dramatiq cqrs_warehouse.worker` imports: the broker with the drain and every listener.

This module is the wiring point of the worker processes, so it bootstraps on
import (Dramatiq needs the actors declared before it starts consuming). It
reads the settings and listeners.yaml; it connects to nothing until the
worker runs.
"""

from .bootstrap import bootstrap
from .settings import Settings

runtime = bootstrap(Settings.from_env())
broker = runtime.broker
