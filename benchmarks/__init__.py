"""Throughput, FLOP and MFU benchmarks of the pretraining step and the data pipeline (not tests).

``python -m benchmarks.step --help`` and ``python -m benchmarks.data --help``; protocol in docs/benchmarks.md.
"""
