#!/bin/sh
# The image's entrypoint: runs its command (the API by default, or
# `dramatiq cqrs_warehouse.worker`) with a fresh Prometheus folder for the
# workers. Dramatiq's metrics exporter (port 9191) and its worker processes
# must share dramatiq_prom_db; a folder of its own per start (mktemp: private,
# unpredictable) holds no stale files, and the workers never remove a folder
# given to them, so none is removed under a running group.
set -eu
if [ -z "${dramatiq_prom_db:-}" ]; then
    dramatiq_prom_db="$(mktemp -d "${TMPDIR:-/tmp}/cqrs-warehouse-metrics.XXXXXXXX")"
    export dramatiq_prom_db
fi
exec "$@"
