"""Build-time tools: model table, weights, compilation, archiving, benchmarks."""
