"""What quorum queues cost: the end-to-end deliveries/s (``pipeline``) and the
slowest listener's latency at 100 commands/s (``latency``), measured the same
way for three brokers in the same run:

- ``classic1``: classic queues on the machine's RabbitMQ (the default);
- ``quorum1``: QUEUE_TYPE=quorum on the same node (a quorum queue of one
  member: the cost of the queue type alone, Raft's log and its fsyncs);
- ``quorum3``: QUEUE_TYPE=quorum on a 3-node cluster beside it
  (``tests/support/cluster.py``, started once per suite run, about 20 s),
  BROKER_URL naming its three nodes: every message replicated to the other
  two nodes before RabbitMQ confirms it. All three nodes share the machine's
  2 cores with everything else, so this is an upper bound of the cost on
  three machines (where the replicas' work is elsewhere, and the network
  round trip is added instead).

The variants' order rotates from one run to the next, so that none always
comes first or after the same one.
Not in the default suite: ``--only quorum`` (with the baselines it should be
read next to, e.g. ``--only quorum chain Dramatiq``).
"""

from __future__ import annotations

from tests.support.cluster import Cluster

from ..context import Context, log
from . import latency, pipeline

#: (label, QUEUE_TYPE, on the cluster)
VARIANTS = (
    ("classic1", "classic", False),
    ("quorum1", "quorum", False),
    ("quorum3", "quorum", True),
)


def run(ctx: Context) -> dict[str, float]:
    knobs = ctx.knobs
    figures: dict[str, float] = {}
    first = ctx.quorum_runs % len(VARIANTS)
    ctx.quorum_runs += 1
    for label, queue_type, clustered in (*VARIANTS[first:], *VARIANTS[:first]):
        options = {
            "broker_url": cluster(ctx).url if clustered else ctx.broker_url,
            "settings": {"QUEUE_TYPE": queue_type},
        }
        e2e = pipeline.measure(
            ctx,
            "p2",
            warmup=knobs.e2e_warmup,
            window=knobs.e2e_window,
            name=f"q_{label}_e2e",
            **options,
        )
        figures[f"quorum.{label}.dps"] = e2e["dps"]
        prefix = f"q_{label}_lat"
        lat = latency.measure(ctx, threads=None, prefix=prefix, **options)
        for stat in ("p50", "p99"):
            figures[f"quorum.{label}.{stat}_ms"] = max(
                lat[f"{prefix}.{listener}.{stat}_ms"] for listener in ctx.routing.listeners
            )
    return figures


def cluster(ctx: Context) -> Cluster:
    if ctx.cluster is None:
        log("starting a 3-node RabbitMQ cluster ...")
        ctx.cluster = Cluster.start()
    return ctx.cluster
