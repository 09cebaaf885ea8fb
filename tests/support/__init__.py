"""What the tests and the benchmarks share to run the service (``bench`` imports it too).

- ``services``: the PostgreSQL and RabbitMQ the tests use; databases and
  broker names of their own, removed afterwards;
- ``processes``: subprocesses in process groups of their own, with log files;
- ``environment``: a service's environment, the runner's own settings cleared;
- ``installation``: one installation of the service, run as its README says;
- ``waiting``: ``eventually`` (the one wait helper) and what builds on it;
- ``prometheus``: reading Prometheus's text format.
"""
