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


def test_bad_minari_input_is_one_line_naming_the_fix(tmp_path):
    tasks = list(spec(ENV).test_tasks[:2])
    make_fake_data(tmp_path / "data", ENV, tasks, n_trajs=2, length=10, quality="medium")
    common = ["--env", ENV, "--quality", "medium", "--data-dir", str(tmp_path / "data")]
    cases = [(["export", *common, "--tasks", "99"], "--tasks [99] are not halfcheetahvel tasks (0..54)"),
             (["export", *common, "--tasks", str(tasks[0]), str(tasks[0])], "more than once"),
             (["export", *common, "--tasks", str(spec(ENV).test_tasks[2])], f"--tasks {spec(ENV).test_tasks[2]}")]
    for argv, want in cases:
        out = minari_io(tmp_path, *argv)
        assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and want in out.stderr, out.stderr[-2000:]
    # a damaged npz, named with the command that remakes it
    damaged = tmp_path / "damaged"
    make_fake_data(damaged, ENV, tasks[:1], n_trajs=2, length=10, quality="medium")
    path = dataset_path(str(damaged), ENV, "medium", tasks[0])
    with open(path, "rb") as f:
        head = f.read(200)
    with open(path, "wb") as f:
        f.write(head)
    out = minari_io(tmp_path, "export", "--env", ENV, "--quality", "medium", "--data-dir", str(damaged))
    assert out.returncode == 1 and "is damaged (BadZipFile)" in out.stderr and "Traceback" not in out.stderr
    # Minari's root where nothing can be written: the variable is named
    (tmp_path / "a_file").write_text("")
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "a_file" / "minari")}
    out = subprocess.run([sys.executable, "minari_io.py", "export", *common], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 1 and "MINARI_DATASETS_PATH" in out.stderr and out.stderr.strip().count("\n") == 0
    # a truncated HDF5 file: import names the dataset and the command that remakes it
    assert minari_io(tmp_path, "export", *common).returncode == 0
    (h5,) = (tmp_path / "minari").rglob("*.hdf5")
    h5.write_bytes(h5.read_bytes()[:300])
    out = minari_io(tmp_path, "import", "--env", ENV, "--quality", "medium", "--data-dir", str(tmp_path / "back"))
    assert out.returncode == 1 and "is damaged" in out.stderr and "--overwrite" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "back").exists()
