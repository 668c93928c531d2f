"""Benchmarks: scripts that print figures (never timed tests).

Run ``python -m nnunetv2_petct.benchmarks --help``. Each ``bench_<name>.py`` module has a
``run(**kwargs) -> dict``; the command prints its result (one JSON line with ``--json``).
"""
