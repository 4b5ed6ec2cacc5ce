"""Sample client source databases, for the demo, the tests and the benchmarks."""
