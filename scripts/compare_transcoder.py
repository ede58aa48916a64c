"""F = SAE latents vs F = transcoder latents on the tiny synthetic source (docs/RESULTS-transcoder.md):
copies the repo to OUT/NAME, overlays the settings on params.yaml, runs source .. compare.

    python scripts/compare_transcoder.py OUT NAME MIN_VALUE [L1]   (NAME sae* or transcoder*)
"""

import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pipeline_helpers import REPO, copy_repo, run_stage, tiny_params, write_params  # noqa: E402

out, name, min_value = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
root = out / name
if not root.exists():
    copy_repo(root)
over = {
    "squeezer": {"M": 32, "steps": 1500, "batch_size": 512},
    "baselines": {"steps": 800, "batch_size": 512},
    "compare": {"n_mantel_permutations": 99, "retrain_steps": 150, "max_features_for_mantel": 200},
    "features": {"top_k": 3, "min_value": min_value},
}
if name.startswith("transcoder"):
    over["sae"] = {"kind": "transcoder", "l1_coefficient": float(sys.argv[4])}
full = yaml.safe_load((REPO / "params.yaml").read_text())
for section, values in tiny_params(**over).items():  # tiny values over the real file
    if isinstance(values, dict) and isinstance(full.get(section), dict):
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(full[section].get(k), dict):
                full[section][k].update(v)
            else:
                full[section][k] = v
write_params(root, full)
for stage in ["source", "activations", "sae", "labels", "features", "squeeze", "baselines", "compare"]:
    t = time.time()
    run_stage(root, stage)
    print(stage, round(time.time() - t, 1), flush=True)
