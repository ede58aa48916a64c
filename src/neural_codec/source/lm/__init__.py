"""The `lm` source: a real TransformerLens model over real text, with a SAELens SAE.

Why: the synthetic source has a known truth; the `lm` source is the real experiment (GPT-2 small +
`gpt2-small-res-jb`, or the offline `glassllm`). One module per concern: `settings` (the SAE's
own hook, BOS and context honoured), `load` (the model, a local model folder), `offline`
(glassllm), `text` (documents and token windows), `extract` (stages `source`/`activations`),
`labels` (latent labels, cyclic families), `ce` (CE-loss scores of the SAE and the Squeezer).
"""
