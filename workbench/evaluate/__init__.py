"""Evaluation: metrics of predictions (`metrics`) and profiles of models (size, FLOPs, latency, throughput).

This package's own namespace stays free of torch, so torch-free views (the comparison, the report) can read
its constants.
"""

BUSY_LIMIT = 0.25  # above this share of the CPU used by other processes, CPU timings are flagged
