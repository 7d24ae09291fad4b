"""Benchmark-and-evaluation harness for visual reasoners that write programs over vision tools."""

__version__ = "0.1.0"
