"""The layout's promises, checked statically: no import cycle in src/, and each dvc.yaml stage
depends on exactly the project modules its script imports (transitively)."""

from __future__ import annotations

from pathlib import Path

import yaml

from neural_codec.imports import code_deps, cycles

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def test_no_import_cycles_in_src():
    assert cycles(SRC) == []


def test_cycle_detector_sees_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "neural_codec"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from neural_codec import b\n")
    (pkg / "b.py").write_text("def f():\n    from neural_codec.a import x\n")
    assert cycles(tmp_path) == [["neural_codec.a", "neural_codec.b", "neural_codec.a"]]


def test_stage_code_deps_match_dvc_yaml():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = REPO / "stages" / f"{name}.py"
        declared = {d for d in stage["deps"] if d.startswith("src/")}
        needed = {str(p.relative_to(REPO)) for p in code_deps(SRC, script)}
        assert f"stages/{name}.py" in stage["deps"], name
        assert declared == needed, (name, sorted(needed - declared), sorted(declared - needed))


def test_stage_scripts_are_thin():
    for script in (REPO / "stages").glob("*.py"):
        assert len(script.read_text().splitlines()) <= 60, script.name
