"""One module per benchmark section; each exposes the one function `benchmarks.run` calls."""
