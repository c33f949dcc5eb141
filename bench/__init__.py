"""The benchmark harness of issue 6: ``make bench`` and ``make bench-quick`` run :mod:`bench.run`."""
