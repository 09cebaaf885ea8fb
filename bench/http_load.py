"""Runs bench.loadgen in its own process and reads back its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from .processes import ROOT, environment


class LoadRun:
    """A load generator running in the background; ``result()`` waits for it."""

    def __init__(self, spec: dict[str, Any], *, timeout: float) -> None:
        self.timeout = timeout
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
            cwd=ROOT,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def result(self) -> dict[str, Any]:
        try:
            out, err = self.process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise RuntimeError(f"the load generator ran over {self.timeout:.0f} s") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"the load generator failed:\n{err[-3000:]}")
        return dict(json.loads(out))


def run_load(spec: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    return LoadRun(spec, timeout=timeout).result()


def seed_skus(port: int, prefix: str, skus: int) -> None:
    """One large increase per SKU, so that the mixed load never ships more than there is."""
    result = run_load(
        {"mode": "seed", "port": port, "sku_prefix": prefix, "skus": skus}, timeout=180
    )
    if set(result["statuses"]) != {"200"}:
        raise RuntimeError(f"seeding the SKUs failed: {result['statuses']}")
