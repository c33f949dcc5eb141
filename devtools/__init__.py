"""Development tooling, not installed with the service: the embedded PostgreSQL (``devdb``), a
PgBouncer for the pooled tests and benchmarks (``devpooler``), and ``make run`` (``devserver``)."""
