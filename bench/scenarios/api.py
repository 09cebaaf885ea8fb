"""Commands/s through the REST API: gunicorn alone, a closed loop of keep-alive clients.

The workers are not running, so the figure is the command side's (validation,
the state change, the outbox row and the NOTIFY in one transaction, logging
and metrics) and compares with the bare Falcon baseline under the same
gunicorn settings and the same client. The outbox fills meanwhile; nothing
drains it. The SKUs were seeded once per suite run (service.py).
"""

from __future__ import annotations

from ..context import Context
from ..loadgen import run_load
from ..service import SKU_PREFIX, installed


def run(ctx: Context) -> dict[str, float]:
    knobs = ctx.knobs
    with installed(ctx, "api") as service:
        port = service.start_api()
        result = run_load(
            {
                "mode": "closed",
                "port": port,
                "sku_prefix": SKU_PREFIX,
                "skus": knobs.skus,
                "connections": knobs.http_connections,
                "warmup": knobs.http_warmup,
                "window": knobs.http_window,
            },
            timeout=knobs.http_warmup + knobs.http_window + 60,
        )
        service.require_alive()
    if set(result["statuses"]) - {"200"}:
        raise RuntimeError(f"service API: answers other than 200: {result['statuses']}")
    return {
        "api.cps": result["rate"],
        "api.p50_ms": result["p50_ms"],
        "api.p99_ms": result["p99_ms"],
        "api.client_cpu": result["client_cpu"],
    }
