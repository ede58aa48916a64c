"""A tiny offline `lm` world for tests: text with weekday/month words, a word-level tokenizer,
a 2-layer HookedTransformer trained briefly on that text and saved as a local model folder,
and SAELens SAEs saved to disk (random, and planted to fire on weekday tokens)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from neural_codec.source.lm import names
from neural_codec.source.lm.load import save_local_model

REPO = Path(__file__).resolve().parents[1]

# capitalised, as in real text (lower-case "may" and "march" are not months)
WEEKDAYS = [w.capitalize() for w in names.WEEKDAYS]
MONTHS = [m.capitalize() for m in names.MONTHS]
NOUNS = ["market", "school", "river", "garden", "office", "station", "library", "kitchen"]
PEOPLE = ["we", "they", "she", "he", "i", "you"]
VERBS = ["went", "walked", "came", "ran", "drove"]
BOS = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<|unk|>"

MODEL_KWARGS = dict(
    n_layers=2,
    d_model=32,
    d_head=8,
    n_heads=4,
    d_mlp=64,
    n_ctx=32,
    act_fn="gelu",
    normalization_type="LN",
    seed=0,
    default_prepend_bos=True,
)


def sentence(rng: random.Random) -> str:
    i = rng.randrange(7)
    m = rng.randrange(12)
    kind = rng.randrange(4)
    if kind == 0:
        return f"after {WEEKDAYS[i]} comes {WEEKDAYS[(i + 1) % 7]} ."
    if kind == 1:
        return f"on {WEEKDAYS[i]} {rng.choice(PEOPLE)} {rng.choice(VERBS)} to the {rng.choice(NOUNS)} ."
    if kind == 2:
        return f"in {MONTHS[m]} {rng.choice(PEOPLE)} {rng.choice(VERBS)} to the {rng.choice(NOUNS)} ."
    return f"after {MONTHS[m]} comes {MONTHS[(m + 1) % 12]} ."


def write_text(directory: Path, n_docs: int = 120, seed: int = 0) -> Path:
    """Two .txt files of documents (blank-line separated paragraphs of a few sentences)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(2):
        docs = [" ".join(sentence(rng) for _ in range(rng.randint(3, 8))) for _ in range(n_docs // 2)]
        (directory / f"part{f}.txt").write_text("\n\n".join(docs) + "\n")
    return directory


def make_tokenizer(text_dir: Path, out: Path):
    """A word-level tokenizer trained on the text, saved and reloaded as a HF tokenizer folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=[BOS, PAD, UNK])
    tok.train([str(p) for p in sorted(text_dir.glob("*.txt"))], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=PAD, unk_token=UNK, add_bos_token=True
    )
    fast.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))


def make_model(root: Path, train_steps: int = 100):
    """Text, tokenizer and a briefly trained tiny HookedTransformer saved as `root/model`."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    text = write_text(root / "text")
    tok = make_tokenizer(text, root / "tokenizer")
    kwargs = dict(MODEL_KWARGS, d_vocab=len(tok))
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**kwargs), tokenizer=tok)
    ids: list[int] = []
    for p in sorted(text.glob("*.txt")):
        ids += tok(p.read_text(), add_special_tokens=False)["input_ids"]
    data = torch.tensor(ids[: len(ids) // 31 * 31]).view(-1, 31)
    data = torch.cat([torch.full((len(data), 1), tok.bos_token_id), data], 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(train_steps):
        batch = data[torch.randint(len(data), (16,), generator=g)]
        loss = model(batch, return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_local_model(model, root / "model", kwargs)
    return model, float(loss)


def random_sae(path: Path, d_in: int, d_sae: int, hook: str, context_size: int = 32, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        metadata=SAEMetadata(hook_name=hook, model_name="tiny", prepend_bos=True, context_size=context_size),
    )
    sae = StandardSAE(cfg)
    sae.save_model(path)
    return sae


def planted_weekday_sae(
    path: Path, resid: np.ndarray, tokens: np.ndarray, tokenizer, hook: str, n_decoys: int = 9, seed: int = 0
):
    """An SAE whose latents fire on one token each (an LDA direction, so top examples are that token): the 7 weekdays (shuffled latent order)
    plus decoy latents on other words and silent latents. Returns (sae, {weekday: latent})."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    vocab = tokenizer.get_vocab()
    decoys = [w for w in ["market", "school", "river", "after", "comes", "in", "on", "the", "to"]][:n_decoys]
    words = WEEKDAYS + decoys
    d_sae = len(words) + 8
    rng = np.random.default_rng(seed)
    slots = rng.permutation(d_sae)
    x = resid.astype(np.float64)
    prec = np.linalg.inv(np.cov(x.T) + 1e-3 * np.eye(x.shape[1]))  # LDA direction: cov^-1 (mu_on - mu_off)
    W = np.zeros((x.shape[1], d_sae))
    b = np.full(d_sae, -1e4)
    for w, j in zip(words, slots, strict=False):
        on = tokens == vocab[w]
        d = prec @ (x[on].mean(0) - x[~on].mean(0))
        s = x @ d
        lo, hi = s[~on].mean(), s[on].mean()
        W[:, j] = d / (hi - lo)
        b[j] = -(lo + hi) / 2 / (hi - lo)  # fires (mostly) on its word; top examples are its word
    cfg = StandardSAEConfig(
        d_in=x.shape[1],
        d_sae=d_sae,
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name=hook, model_name="tiny", prepend_bos=True, context_size=32),
    )
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.as_tensor(W, dtype=torch.float32))
        sae.b_enc.copy_(torch.as_tensor(b, dtype=torch.float32))
        sae.b_dec.zero_()
    sae.save_model(path)
    return sae, {w: int(j) for w, j in zip(words, slots, strict=False)}
