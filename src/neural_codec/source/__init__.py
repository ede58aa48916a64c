"""The decompress half's input: which model's activations we decompress.

`source.kind` selects the synthetic ground-truth source (`source.synthetic`, the offline default)
or a real language model (`source.lm`); `source.build` runs the selected kind for the `source` and
`activations` stages. Only the selected kind's sub-section of params is validated.
"""
