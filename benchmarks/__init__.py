"""Benchmarks of the Neural Codec's hot paths against naive implementations (`python -m benchmarks.run`).

`harness` times, measures memory and writes results; `naive` holds the reference implementations
the cases compare against; `cases/` has one module per benchmark section; `run` is the CLI.
"""
