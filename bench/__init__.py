"""Benchmarks: figures measured on a machine, never asserted in tests."""
