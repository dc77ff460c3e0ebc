"""Benchmarks: asv suites (layers.py, models.py) and pytest-benchmark ratios (test_ratios.py); see common.py."""
