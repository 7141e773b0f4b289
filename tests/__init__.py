"""The test suite; `tests.support` is the harness that tests and benchmarks import."""
