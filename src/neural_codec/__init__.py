"""The Neural Codec: are polysemantic neurons a structured compression of monosemantic features?

Decompress (model activations -> SAE features), re-compress (features -> M ReLU neurons ->
features, the Squeezer), and analyse the codec (geometry, logic, circuit comparison).
"""

__version__ = "0.1.0"
