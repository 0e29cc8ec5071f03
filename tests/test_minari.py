"""minari_io.py: our npz datasets to a Minari dataset and back, losslessly, with the env recoverable."""
import os
import subprocess
import sys

import numpy as np

from common.data import dataset_path
from common.envs import GYM_IDS, spec
from conftest import make_fake_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = "halfcheetahvel"


def minari_io(tmp_path, *args):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari")}  # never the user's own datasets
    return subprocess.run([sys.executable, "minari_io.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def test_export_import_round_trip_is_lossless_and_the_env_is_recoverable(tmp_path, monkeypatch):
    tasks = list(spec(ENV).test_tasks[:2])
    make_fake_data(tmp_path / "data", ENV, tasks, n_trajs=3, length=20, quality="medium")
    out = minari_io(tmp_path, "export", "--env", ENV, "--quality", "medium", "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "exported 6 episodes of 2 tasks (120 steps)" in out.stdout
    again = minari_io(tmp_path, "export", "--env", ENV, "--quality", "medium", "--data-dir", str(tmp_path / "data"))
    assert again.returncode == 1 and "exists; pass --overwrite" in again.stderr and "Traceback" not in again.stderr
    out = minari_io(tmp_path, "import", "--env", ENV, "--quality", "medium", "--data-dir", str(tmp_path / "back"))
    assert out.returncode == 0, out.stderr[-2000:]
    for t in tasks:  # every array and every metadata field of our files comes back identical
        with np.load(dataset_path(str(tmp_path / "data"), ENV, "medium", t)) as a, \
                np.load(dataset_path(str(tmp_path / "back"), ENV, "medium", t)) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    import minari

    ds = minari.load_dataset(f"rft/{ENV}/medium-v0")
    assert ds.total_episodes == 6 and ds.spec.env_spec.id == GYM_IDS[ENV]
    assert "terminations" in ds[0].__dict__ and "truncations" in ds[0].__dict__  # Minari's names for ours
    md = ds.storage.metadata
    assert md["ref_min_score"] < md["ref_max_score"] and "| task | parameter |" in md["description"]
    env = ds.recover_environment()
    assert env.unwrapped.name == ENV and env.observation_space.shape == (spec(ENV).obs_dim,)
    env.reset(seed=0, options={"task": tasks[1]})
    assert env.unwrapped.task == tasks[1]


def test_missing_data_and_datasets_are_one_line_errors(tmp_path):
    out = minari_io(tmp_path, "export", "--env", ENV, "--data-dir", str(tmp_path / "none"))
    assert out.returncode == 1 and "python collect_data.py --env halfcheetahvel" in out.stderr
    out = minari_io(tmp_path, "import", "--env", "antdir", "--data-dir", str(tmp_path / "x"))
    assert out.returncode == 1 and "python minari_io.py export --env antdir --quality expert" in out.stderr
    assert not (tmp_path / "x").exists()
