"""The shared plumbing: params validation messages, atomic outputs, shards, sparse features."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from neural_codec import storage
from neural_codec.errors import ParamError, check
from neural_codec.params import from_dict


@dataclass
class Cfg:
    M: int = 4
    lr: float = 0.1
    mode: Literal["a", "b"] = "a"
    sizes: list[int] = field(default_factory=lambda: [1])

    def __post_init__(self):
        check(self.M >= 1, "M", self.M, "an integer >= 1")


def test_valid_params_are_typed():
    cfg = from_dict(Cfg, {"M": 3, "lr": 1, "mode": "b"}, "sq")
    assert cfg.M == 3 and isinstance(cfg.lr, float) and cfg.mode == "b"


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"M": 0}, "sq.M = 0"),
        ({"M": "3"}, "sq.M = '3'"),
        ({"M": 2.5}, "an integer"),
        ({"mode": "c"}, "one of 'a', 'b'"),
        ({"typo": 1}, "sq.typo = 1"),
        ({"sizes": [1, "x"]}, "sq.sizes[1]"),
        ({"M": True}, "an integer"),
        ({"lr": float("inf")}, "a finite number"),
        ({"lr": float("nan")}, "a finite number"),
    ],
)
def test_bad_params_name_key_value_and_allowed(data, needle):
    with pytest.raises(ParamError) as err:
        from_dict(Cfg, data, "sq")
    assert needle in str(err.value)
    assert "expected" in str(err.value) or "one of the keys" in str(err.value)


def test_params_yaml_spells_out_the_code_defaults():
    """params.yaml is the documentation of every knob: each section holds every field of its
    dataclass, at the dataclass's default (so a key left out means what params.yaml says)."""
    import dataclasses
    from pathlib import Path

    from neural_codec.config import (
        ActivationsConfig,
        BaselinesConfig,
        CompareConfig,
        FeaturesConfig,
        GeometryConfig,
        LMSourceConfig,
        LogicConfig,
        SAEConfig,
        SeedsConfig,
        SourceConfig,
        SqueezerConfig,
        SyntheticConfig,
        TMSConfig,
    )
    from neural_codec.params import SECTIONS, load_params

    params = load_params(Path(__file__).parents[1] / "params.yaml")
    assert tuple(params) == SECTIONS
    sections = {
        "source": (SourceConfig, params["source"]),
        "source.synthetic": (SyntheticConfig, params["source"]["synthetic"]),
        "source.lm": (LMSourceConfig, params["source"]["lm"]),
        "activations": (ActivationsConfig, params["activations"]),
        "sae": (SAEConfig, params["sae"]),
        "features": (FeaturesConfig, params["features"]),
        "squeezer": (SqueezerConfig, params["squeezer"]),
        "baselines": (BaselinesConfig, params["baselines"]),
        "geometry": (GeometryConfig, params["geometry"]),
        "logic": (LogicConfig, params["logic"]),
        "compare": (CompareConfig, params["compare"]),
        "tms": (TMSConfig, params["tms"]),
        "seeds": (SeedsConfig, params["seeds"]),
    }
    for name, (cls, data) in sections.items():
        default, given = cls(), from_dict(cls, data, name)
        for f in dataclasses.fields(cls):
            if not f.init or f.name in ("synthetic", "lm"):
                continue
            assert f.name in data, f"params.yaml has no {name}.{f.name}"
            assert getattr(given, f.name) == getattr(default, f.name), f"{name}.{f.name}"


def test_unknown_section_is_refused(tmp_path):
    from neural_codec.params import load_params

    (tmp_path / "params.yaml").write_text("squeezr:\n  M: 64\n")
    with pytest.raises(ParamError, match="squeezr = .*one of the sections source, activations"):
        load_params(tmp_path / "params.yaml")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with storage.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    out = tmp_path / "stage"
    with storage.atomic_dir(out) as d:
        (d / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with storage.atomic_dir(out) as d:
            (d / "a.txt").write_text("v2-half")
            raise RuntimeError
    assert (out / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_shards_stream_in_batches_across_boundaries(tmp_path):
    x = np.arange(1000, dtype=np.float32).reshape(250, 4)
    w = storage.ShardWriter(tmp_path / "s", rows_per_shard=64, d_model=4)
    for i in range(0, 250, 30):
        w.append(resid=x[i : i + 30])
    meta = w.close()
    assert meta == {"n_rows": 250, "n_shards": 4, "d_model": 4}
    batches = list(storage.iter_batches(tmp_path / "s", 100, ["resid"]))
    assert [len(b["resid"]) for b in batches] == [100, 100, 50]
    np.testing.assert_array_equal(np.concatenate([b["resid"] for b in batches]), x)


def test_sparse_features_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.random((50, 20)).astype(np.float32) * (rng.random((50, 20)) < 0.15)
    feats = storage.SparseFeatures.from_dense(dense, k=20)
    np.testing.assert_allclose(feats.to_dense(), dense)
    np.testing.assert_allclose(feats.to_csr().toarray(), dense)
    top2 = storage.SparseFeatures.from_dense(dense, k=2)
    assert ((top2.val > 0).sum(1) <= 2).all()
    kept = top2.to_dense()
    assert np.all((kept == 0) | (kept == dense))
    np.testing.assert_allclose(kept.max(1), dense.max(1))
    storage.write_sparse(tmp_path / "f", top2, rows_per_shard=16)
    back = storage.load_sparse(tmp_path / "f")
    np.testing.assert_array_equal(back.to_dense(), kept)
    np.testing.assert_allclose(back.firing_frequency(), (kept > 0).mean(0))


NAMED_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", NAMED_CONFIGS, ids=lambda p: p.stem)
def test_named_configs_name_real_keys_and_pass_validation(config, tmp_path):
    """Each `configs/*.yaml` (flat `section.key: value`, fed to `dvc exp run -S`) overrides keys
    that params.yaml has, and the result passes `check_params`: a renamed key or a bad value in a
    named experiment fails here, not after an hour of `dvc exp run`."""
    import yaml

    from neural_codec.params import check_params

    root = config.parents[1]
    data = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in yaml.safe_load(config.read_text()).items():
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        assert last in node, f"{config.name}: {key} is not a params.yaml key"
        node[last] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    try:
        check_params(tmp_path / "params.yaml", ram=24 << 30)
    except ParamError as err:  # a GPU recipe on a machine without one: only the device check may fail
        if "device" not in str(err) or "cuda" not in str(err):
            raise
