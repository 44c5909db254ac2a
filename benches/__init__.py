"""Benchmarks: every speed claim comes from here (``python -m benches.<name> --json``)."""
