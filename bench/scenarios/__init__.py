"""One module per measurement; each ``run(ctx)`` does one independent run and
returns its figures by name (see bench.report for their labels and targets)."""
