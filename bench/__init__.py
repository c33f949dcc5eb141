"""The benchmark harness: ``make bench`` and ``make bench-quick`` run :mod:`bench.run`."""
