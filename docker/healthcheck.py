"""The image's HEALTHCHECK: the API's /readyz, or in a worker container (its
process 1 is dramatiq) the workers' metrics port, which dramatiq serves once
every worker process has booted."""

import os
import urllib.request

with open("/proc/1/cmdline", "rb") as cmdline:
    worker = b"dramatiq" in cmdline.read()
if worker:
    url = f"http://127.0.0.1:{os.environ.get('dramatiq_prom_port', '9191')}/"  # noqa: SIM112 (dramatiq's name)
else:
    url = f"http://127.0.0.1:{os.environ.get('BIND', '0.0.0.0:8000').rsplit(':', 1)[1]}/readyz"
urllib.request.urlopen(url, timeout=4)  # raises (exit 1) unless 2xx
