"""What `dramatiq cqrs_warehouse.worker` imports: the broker with the drain and every listener.

This module is the workers' entry point, so it builds on import (Dramatiq
needs the actors declared before it starts consuming). It reads the
settings and listeners.yaml; it connects to nothing until the worker runs.
"""

from .worker_setup import worker_broker

broker = worker_broker()
