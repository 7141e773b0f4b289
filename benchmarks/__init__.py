"""Memento benchmarks on real SGLang servers; run one with `python -m benchmarks NAME [ARGS]`."""
