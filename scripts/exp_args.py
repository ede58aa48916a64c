"""Print a named configuration (flat `section.key: value` YAML) as `dvc exp run -S` arguments.

dvc exp run $(python scripts/exp_args.py configs/lm-glassllm.yaml)
"""

import sys

import yaml


def exp_args(path: str) -> list[str]:
    with open(path) as fh:
        flat = yaml.safe_load(fh) or {}
    args = []
    for key, value in flat.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args


if __name__ == "__main__":
    print(" ".join(exp_args(sys.argv[1])))
