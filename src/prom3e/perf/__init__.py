"""Benchmarks: ``prom3e perf train | encode | retrieval | e2e`` (see docs/PERFORMANCE.md).

Every benchmark measures ratios within one process (variants interleaved, medians), since
the machines it runs on are shared and noisy.
"""
