"""Benchmark suite of cqrs-warehouse: `.venv/bin/python -m bench` (see bench/README.md).

It starts its own gunicorn and dramatiq processes against the PostgreSQL and
RabbitMQ on 127.0.0.1, measures the service next to bare baselines of the same
stack in the same run, prints one table and writes bench/RESULTS.md.
"""
