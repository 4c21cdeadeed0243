"""A TorchServe's lifecycle for make serve, the tests and the benchmarks."""
