"""Benchmarks of a kdray grid on this machine: `python -m bench` prints one JSON object.

P1 worker efficiency, P2 grid packing, P3 fixed cost per trial, P4 KD overhead, P6 data wait and
peak memory; see bench/README.md for what each figure means and how it is measured.
"""
