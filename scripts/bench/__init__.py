"""Measuring: end-to-end, handler and scaling benchmarks, load generation, soak, reports."""
