"""Inputs whose results must make sense: real photos and a clip made from one (tests, benchmarks)."""
