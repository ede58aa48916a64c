"""Bad data fails loudly, in one line naming the file and what to run; artifacts are byte-stable.

Each test asserts the one-line message and what is left on disk (issue 16)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_helpers import REPO, run_stage, tiny_params, write_params

from neural_codec import paths, storage
from neural_codec.config import FeaturesConfig, SAEConfig, SqueezerConfig
from neural_codec.errors import DataError, LMUnavailable, ParamError
from neural_codec.features import encode_split
from neural_codec.params import SECTIONS
from neural_codec.sae import load_sae, train_sae
from neural_codec.squeezer.checkpoint import load_squeezer, save_squeezer
from neural_codec.squeezer.model import Squeezer


def one_line(err: BaseException | str) -> str:
    text = str(err)
    assert "\n" not in text.strip(), text
    assert not text.startswith("params.yaml:"), text  # a data error is not a params error
    return text


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


def write_split(directory: Path, rows_per_shard: int = 50, n: int = 120, d: int = 8, **bad_rows) -> Path:
    rng = np.random.default_rng(0)
    w = storage.ShardWriter(directory, rows_per_shard, d_model=d, n_neurons=d)
    resid = rng.normal(size=(n, d)).astype(np.float32)
    neurons = np.abs(rng.normal(size=(n, d))).astype(np.float32)
    for row in bad_rows.get("nan", []):
        resid[row, 1] = np.nan
    for row in bad_rows.get("inf", []):
        resid[row, 2] = np.inf
    w.append(resid=resid, neurons=neurons)
    w.close()
    return directory


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------------------------
# 1. finiteness where data enters a stage
# --------------------------------------------------------------------------------------------


def test_nan_in_activations_is_refused_before_sae_training(tmp_path):
    train = write_split(tmp_path / "train", nan=[57, 60], inf=[60])  # shard 1 rows 7, 10
    cfg = SAEConfig(d_sae=16, k=2, batch_size=16, training_samples=1000)
    with pytest.raises(DataError) as err:
        train_sae(cfg, train)
    msg = one_line(err.value)
    assert "shard_00001.npz" in msg and "`resid`" in msg
    assert "3 non-finite values" in msg and "rows 7, 10" in msg
    assert "dvc repro" in msg


def test_sae_stage_with_nan_activations_exits_2_and_writes_nothing(tmp_path, capsys):
    write_params(tmp_path, tiny_params(sae={"batch_size": 16, "d_sae": 16, "k": 2, "training_samples": 1000}))
    write_split(tmp_path / paths.ACTIVATIONS / "train", nan=[3])
    write_split(tmp_path / paths.ACTIVATIONS / "heldout")
    with pytest.raises(SystemExit) as ex:
        run_stage(tmp_path, "sae")
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("[sae] error: data/activations/train/shard_00000.npz: `resid` has 1 non-finite")
    one_line(err)
    assert not (tmp_path / paths.SAE).exists() and not (tmp_path / paths.metrics_file("sae")).exists()
    assert temps(tmp_path) == []


def test_nan_in_heldout_activations_is_refused_by_squeeze_inputs(tmp_path):
    held = write_split(tmp_path / "heldout", inf=[5])
    with pytest.raises(DataError) as err:
        storage.check_shards(held)
    assert "heldout/shard_00000.npz: `resid` has 1 non-finite values (NaN/inf), in rows 5" in one_line(
        err.value
    )


def _checkpoint(path: Path, n: int = 12, M: int = 4) -> Squeezer:
    torch.manual_seed(0)
    model = Squeezer(n, M, False)
    save_squeezer(path, model, SqueezerConfig(M=M))
    return model


def test_nan_in_heldout_neurons_is_refused_by_logic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from neural_codec.config import LogicConfig
    from neural_codec.pipeline import logic

    _checkpoint(paths.SQUEEZER)
    neurons = np.ones((30, 4), dtype=np.float32)
    neurons[[4, 9], 0] = np.nan
    np.save(paths.HELDOUT_NEURONS, neurons)
    for p in (paths.FEATURES / "train", paths.FEATURES / "heldout"):
        p.mkdir(parents=True)
    paths.FAMILIES.parent.mkdir(parents=True, exist_ok=True)
    paths.FAMILIES.write_text("[]")
    with pytest.raises(DataError) as err:
        logic.run(LogicConfig())
    msg = one_line(err.value)
    assert msg.startswith("data/squeeze/heldout_neurons.npy: has 2 non-finite values (NaN/inf), in rows 4, 9")


def test_truncated_heldout_neurons_npy_names_the_file(tmp_path):
    p = tmp_path / "heldout_neurons.npy"
    np.save(p, np.ones((100, 8), dtype=np.float32))
    truncate(p)
    with pytest.raises(DataError) as err:
        storage.load_npy(p, mmap=True)
    assert (
        str(p) in one_line(err.value) and "truncated" in str(err.value) and "dvc checkout" in str(err.value)
    )


def test_nan_metric_is_an_error_not_a_silent_null(tmp_path):
    out = tmp_path / "metrics" / "sae.json"
    with pytest.raises(DataError) as err:
        storage.write_json(
            out, {"explained_variance": float("nan"), "l0": np.float32(2.0), "x": [1.0, np.inf]}
        )
    msg = one_line(err.value)
    assert "2 non-finite (NaN/inf) values to write at explained_variance, x[1]" in msg
    assert not out.exists() and temps(tmp_path) == []


def test_nan_metric_with_a_reason_is_null_and_said(tmp_path, capsys):
    out = tmp_path / "m.json"
    storage.write_json(out, {"a": {"median": float("nan")}, "b": 1.0}, missing_ok="empty group")
    assert json.loads(out.read_text()) == {"a": {"median": None}, "b": 1.0}
    assert "1 values written as null (empty group): a.median" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 2. corrupt or missing inputs
# --------------------------------------------------------------------------------------------


def test_truncated_shard_names_the_file(tmp_path):
    split = write_split(tmp_path / "train")
    truncate(split / "shard_00001.npz")
    with pytest.raises(DataError) as err:
        list(storage.iter_batches(split, 32, ["resid"]))
    msg = one_line(err.value)
    assert msg.startswith(f"{split / 'shard_00001.npz'}: truncated or corrupt")
    assert "dvc repro" in msg and "dvc checkout" in msg


def test_shard_without_the_key_names_the_file(tmp_path):
    split = write_split(tmp_path / "train")
    with pytest.raises(DataError, match=r"shard_00000.npz: has no array 'idx'"):
        next(storage.iter_shards(split, ["idx"]))


def test_no_shards_names_the_directory(tmp_path):
    with pytest.raises(DataError, match=r"no shards"):
        storage.shard_paths(tmp_path)


class _StubSAE:
    class cfg:
        d_sae = 16

    def encode(self, x):
        return torch.relu(torch.cat([x, x], dim=1))


def test_features_encode_split_truncated_and_nan_activations(tmp_path):
    split = write_split(tmp_path / "act", nan=[110])
    with pytest.raises(DataError) as err:
        encode_split(_StubSAE(), FeaturesConfig(top_k=2, batch_size=32), split, tmp_path / "out")
    assert "shard_00002.npz: `resid` has 1 non-finite values (NaN/inf), in rows 10" in one_line(err.value)
    split2 = write_split(tmp_path / "act2")
    truncate(split2 / "shard_00000.npz", 0.3)
    with pytest.raises(DataError, match="truncated or corrupt"):
        encode_split(_StubSAE(), FeaturesConfig(top_k=2, batch_size=32), split2, tmp_path / "out2")


def test_truncated_squeezer_checkpoint(tmp_path):
    p = tmp_path / "squeezer.pt"
    _checkpoint(p)
    truncate(p)
    with pytest.raises(DataError) as err:
        load_squeezer(p)
    msg = one_line(err.value)
    assert msg.startswith(f"{p}: truncated or corrupt") and "dvc checkout" in msg
    assert p.exists()  # the reader never deletes what it could not read
    with pytest.raises(DataError, match="missing"):
        load_squeezer(tmp_path / "nope.pt")


def test_bad_and_missing_sae_cfg_json(tmp_path):
    d = tmp_path / "sae"
    d.mkdir()
    with pytest.raises(LMUnavailable) as err:
        load_sae(d)
    assert "no cfg.json" in one_line(err.value) and "dvc checkout" in str(err.value)
    (d / "cfg.json").write_text('{"d_in": 8, ')
    with pytest.raises(DataError) as err2:
        load_sae(d)
    assert one_line(err2.value).startswith(f"{d / 'cfg.json'}: not valid JSON")
    (d / "cfg.json").write_text("{}")
    with pytest.raises(DataError, match="not a loadable SAELens SAE"):
        load_sae(d)


# --------------------------------------------------------------------------------------------
# stage.run: one line, exit codes, temp sweep, umask
# --------------------------------------------------------------------------------------------


def test_stage_run_prints_data_errors_in_one_line(tmp_path, monkeypatch, capsys):
    from neural_codec import stage

    monkeypatch.chdir(tmp_path)

    def main():
        storage.read_json("data/labels/families.json")

    with pytest.raises(SystemExit) as ex:
        stage.run("logic", main)
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("[logic] error: data/labels/families.json: missing; run `dvc repro`")


SLOW_STAGE = """
import sys, time
from pathlib import Path
from neural_codec import stage, storage

def main():
    with storage.atomic_dir("data/out") as d:
        (d / "half.bin").write_bytes(b"x" * 100)
        with storage.atomic_path("metrics/out.json") as f:
            f.write_text("{}")
            print("ready", flush=True)
            time.sleep(60)

stage.run("slow", main)
"""


def _spawn(tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SLOW_STAGE)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a job started in the background by a non-interactive shell inherits SIGINT ignored, and
        # Python then installs no KeyboardInterrupt handler: give the child the terminal's default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_sigint_gives_one_line_exit_130_and_leaves_no_temp(tmp_path):
    proc = _spawn(tmp_path)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert temps(tmp_path)  # mid-write: the temporaries exist
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().startswith("[slow] interrupted (Ctrl-C)") and "dvc checkout" in err
    assert err.strip().count("\n") == 0, err
    assert temps(tmp_path) == [] and not (tmp_path / "data" / "out").exists()
    assert not (tmp_path / "metrics" / "out.json").exists()


def test_sigkill_leftovers_are_swept_at_the_next_stage_start(tmp_path, monkeypatch):
    proc = _spawn(tmp_path)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait(timeout=30)
    left = temps(tmp_path)
    assert len(left) == 2  # data/.out.<pid>.*.tmp and metrics/.out.json.<pid>.*.tmp
    live = tmp_path / "data" / f".sae.{os.getpid()}.x.tmp"  # a running writer's temp is kept
    live.mkdir()
    monkeypatch.chdir(tmp_path)
    from neural_codec import stage

    stage.run("noop", lambda: None)
    assert temps(tmp_path) == [live]


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with storage.atomic_path(tmp_path / "f.json") as f:
            f.write_text("{}")
        with storage.atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


# --------------------------------------------------------------------------------------------
# 3. byte-stable artifacts
# --------------------------------------------------------------------------------------------


def test_saving_the_same_squeezer_twice_gives_identical_bytes(tmp_path):
    model = _checkpoint(tmp_path / "a.pt")
    save_squeezer(tmp_path / "b.pt", model, SqueezerConfig(M=4))
    a, b = (tmp_path / "a.pt").read_bytes(), (tmp_path / "b.pt").read_bytes()
    assert a == b
    assert b".tmp" not in a  # the archive does not record the temporary file name


def test_saving_the_same_toy_model_twice_gives_identical_bytes(tmp_path):
    from neural_codec.config import SyntheticConfig
    from neural_codec.source.synthetic import ToyModel, save_toy_model

    cfg = SyntheticConfig()
    model = ToyModel(torch.randn(cfg.n_features, cfg.d_model), cfg.n_neurons, 0)
    save_toy_model(tmp_path / "m1.pt", model, cfg, 0)
    save_toy_model(tmp_path / "m2.pt", model, cfg, 0)
    assert (tmp_path / "m1.pt").read_bytes() == (tmp_path / "m2.pt").read_bytes()


def test_cfg_json_is_rewritten_with_sorted_keys(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"z": 1, "a": {"y": 2, "b": 3}}))
    b.write_text(json.dumps({"a": {"b": 3, "y": 2}, "z": 1}))
    storage.write_json_sorted(a)
    storage.write_json_sorted(b)
    assert a.read_bytes() == b.read_bytes()
    assert list(json.loads(a.read_text())) == ["a", "z"]


def test_param_errors_keep_their_prefix():
    from neural_codec.errors import check

    with pytest.raises(ParamError, match=r"^params.yaml: x"):
        check(False, "x", 1, "2")


# --------------------------------------------------------------------------------------------
# 4. the whole-file params check
# --------------------------------------------------------------------------------------------


def _check(tmp_path: Path, text: str, capsys, ram: int | None = None) -> tuple[int, str]:
    from neural_codec import params

    p = tmp_path / "params.yaml"
    p.write_text(text)
    if ram is not None:
        with pytest.raises(ParamError) as err:
            params.check_params(p, ram=ram)
        return 2, str(err.value)
    rc = params.main([str(p)])
    return rc, capsys.readouterr().err.strip()


def test_check_params_accepts_the_repository_params(capsys):
    from neural_codec import params

    assert params.main([str(REPO / "params.yaml")]) == 0
    assert f"ok ({len(params.SECTIONS)} sections)" in capsys.readouterr().out
    assert set(params.section_classes()) == set(params.SECTIONS)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "params.yaml is empty"),
        ("squeezer: [1, 2\n", "not valid YAML at line 2"),
        ("squeezer:\n  M: 64\nsqueezr:\n  M: 32\n", "params.yaml: squeezr = {'M': 32} is not allowed"),
        ("squeezer:\n", "params.yaml: squeezer = None is not allowed; expected a mapping of keys"),
        ("compare:\n  n_perms: 3\n", "params.yaml: compare.n_perms"),
        ("logic:\n  alpha: 'small'\n", "params.yaml: logic.alpha = 'small'"),
        (
            "sae:\n  d_sae: 16\nfeatures:\n  top_k: 32\n",
            "features.top_k = 32 is not allowed; expected <= the SAE's",
        ),
        ("- 1\n- 2\n", "expected a mapping of sections"),
    ],
)
def test_check_params_refuses_bad_files_in_one_line(tmp_path, capsys, text, needle):
    rc, err = _check(tmp_path, text, capsys)
    assert rc == 2
    assert err.startswith("[check-params] error:") and err.count("\n") == 0, err
    assert needle in err


def test_check_params_flags_sizes_beyond_memory(tmp_path, capsys):
    rc, err = _check(tmp_path, "squeezer:\n  M: 100000000\n", capsys, ram=16 * 2**30)
    assert "params.yaml: squeezer.M = 100000000 is not allowed; expected a size that fits in memory" in err
    assert "16.0 GB of RAM" in err
    rc, _ = _check(tmp_path, "squeezer:\n  M: 64\n", capsys)
    assert rc == 0


def test_stage_run_directly_on_an_empty_params_file_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("")
    with pytest.raises(SystemExit) as ex:
        run_stage(tmp_path, "logic")
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    expected = "[logic] error: params.yaml is empty: expected a mapping of the sections " + ", ".join(
        SECTIONS
    )
    assert err.startswith(expected) and "\n" not in err
    assert err.endswith("`dvc checkout` restores the previous outputs)")
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "data").exists()


def test_shards_and_npz_are_byte_stable_and_readable(tmp_path, monkeypatch):
    import time as _time

    arrays = {"idx": np.arange(12, dtype=np.int32).reshape(6, 2), "val": np.ones((6, 2), np.float32)}
    storage.save_npz(tmp_path / "a.npz", **arrays)
    monkeypatch.setattr(_time, "time", lambda: 2e9)  # another day: np.savez would stamp it
    storage.save_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = storage.load_shard(tmp_path / "b.npz")
    assert set(loaded) == {"idx", "val"} and np.array_equal(loaded["idx"], arrays["idx"])


def test_a_reason_covers_only_the_keys_it_names(tmp_path):
    out = tmp_path / "g.json"
    obj = {"trained": {"lines": {"2/5": {"enrichment": float("nan")}}, "fvu": float("nan")}}
    with pytest.raises(DataError, match=r"1 non-finite \(NaN/inf\) values to write at trained\.fvu"):
        storage.write_json(out, obj, missing_ok="empty flanks", where="*.lines.*")
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# 6. scripts/sweep_m.py
# --------------------------------------------------------------------------------------------


def _sweep_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_m", REPO / "scripts" / "sweep_m.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _rev(rev: str, name: str, M: int, fvu: float, experiments=None) -> dict:
    return {
        "rev": rev,
        "name": name,
        "error": None,
        "experiments": experiments,
        "data": {
            "rev": rev,
            "params": {"params.yaml": {"data": {"squeezer": {"M": M}}}},
            "metrics": {"metrics/squeeze.json": {"data": {"squeezer": {"fvu": fvu, "M": M}}}},
        },
    }


def test_sweep_m_clear_errors(tmp_path, monkeypatch, capsys):
    main = _sweep_main()
    assert main(["--json", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep_m: error: --json") and "no such file" in err and "\n" not in err
    (tmp_path / "bad.json").write_text("{")
    assert main(["--json", str(tmp_path / "bad.json")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no dvc here
    assert main(["--out", str(tmp_path / "o.csv"), "--png", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep_m: error: dvc is not on PATH") and "\n" not in err
    assert not (tmp_path / "o.csv").exists()


def test_sweep_m_one_row_per_m_and_main_is_not_an_experiment(tmp_path, capsys):
    exps = [{"revs": [_rev("b" * 40, "exp-128", 128, 0.25)]}, {"revs": [_rev("c" * 40, "exp-64", 64, 0.5)]}]
    data = [_rev("a" * 40, "main", 128, 0.75, exps)]
    (tmp_path / "show.json").write_text(json.dumps(data))
    out_csv = tmp_path / "sweep.csv"
    rc = _sweep_main()(
        ["--json", str(tmp_path / "show.json"), "--out", str(out_csv), "--png", str(tmp_path / "s.png")]
    )
    assert rc == 0
    lines = out_csv.read_text().splitlines()
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["64", "exp-64", "0.5"],
        ["128", "exp-128+main", "0.5"],
    ]
    assert "2 values of M from 2 experiments and 1 baseline commits" in capsys.readouterr().out
