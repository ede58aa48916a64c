"""The analyses of the codec, each on plain arrays: `geometry` (feature dimensionality,
polytopes, circles), `logic` (do neuron-sharing features co-occur less or more than chance?),
`compare` (do synthetic neurons fire like the model's?). Their figures are in `*_plots`."""
