"""One module per analysis stage of `dvc.yaml`: read the stage's inputs (checked before any
work), run the library code on them, and write its outputs. `stages/<name>.py` is the thin
command DVC runs; the analyses themselves live in `neural_codec.analysis`."""
