"""The Squeezer: re-compress sparse SAE features through M ReLU "synthetic neurons".

    h     = ReLU(f @ W_enc + b_enc)          (B, M)   the synthetic neurons (a privileged basis)
    f_hat = ReLU(h @ W_dec + b_dec)          (B, n)   features are non-negative

`model` holds the module, `loss` the importance-weighted (optionally sampled) loss, `train` the
training loop, `checkpoint` the one reader/writer of `squeezer.pt`, `inputs` the checks of what
the squeeze stage reads. The metric it shares with every baseline lives in `neural_codec.codec`.
"""
