"""collect_data.py end to end, at a seconds-long scale, for every env family."""
import os
import subprocess
import sys

import numpy as np
import pytest

from common.data import FIELDS, QUALITIES, dataset_path, load_behaviour, load_trajectories, save_behaviour
from common.envs import ENV_NAMES, spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def collect(tmp_path, env, *extra):
    tasks = [str(t) for t in spec(env).test_tasks[:2]]
    cmd = [sys.executable, "collect_data.py", "--env", env, "--data-dir", str(tmp_path / "data"),
           "--behaviour-dir", str(tmp_path / "behaviour"), "--num-trajs", "3", "--total-timesteps", "5200",
           "--calib-episodes", "1", "--calib-iters", "2", "--threads", "1", "--tasks", *tasks, *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, [int(t) for t in tasks]


@pytest.mark.parametrize("env", ENV_NAMES)
def test_collect_writes_loadable_d4rl_style_files_and_a_summary(tmp_path, env):
    stdout, tasks = collect(tmp_path, env)
    s = spec(env)
    for q in QUALITIES:
        for t in tasks:
            with np.load(dataset_path(str(tmp_path / "data"), env, q, t)) as z:
                assert set(FIELDS) <= set(z.files)
                assert z["observations"].shape[1] == s.obs_dim and z["actions"].shape[1] == s.act_dim
                assert np.abs(z["actions"]).max() <= 1.0
                assert len(z["episode_returns"]) == 3 and str(z["quality"]) == q
            trajs = load_trajectories(env, t, q, str(tmp_path / "data"))
            assert len(trajs) == 3
            for tr in trajs:
                assert 0 < len(tr["rewards"]) <= s.horizon
                assert np.isfinite(tr["rewards"]).all() and np.isfinite(tr["observations"]).all()
                np.testing.assert_array_equal(tr["observations"][1:], tr["next_observations"][:-1])
                if env == "metaworld":
                    assert (tr["observations"][:, -3:] == 0).all()  # the goal is hidden as in ML45
    assert os.path.exists(tmp_path / "behaviour" / f"{env}.pt")
    assert os.path.exists(tmp_path / "data" / env / "summary.json")
    assert "| expert |" in stdout and "| medium |" in stdout and "TQ" in stdout


def test_collect_resumes_after_a_deleted_and_a_half_written_file_and_is_deterministic(tmp_path):
    env = "halfcheetahdir"
    collect(tmp_path, env)
    data = str(tmp_path / "data")
    before = {(q, t): load_trajectories(env, t, q, data) for q in QUALITIES for t in (0, 1)}
    stamp = os.path.getmtime(dataset_path(data, env, "expert", 1))
    os.remove(dataset_path(data, env, "medium", 0))
    half = dataset_path(data, env, "expert", 0)
    with open(half, "rb") as f:
        blob = f.read()
    with open(half, "wb") as f:
        f.write(blob[: len(blob) // 2])
    open(half + ".tmp", "wb").close()  # debris of a killed write
    stdout, _ = collect(tmp_path, env)
    assert "2 of 4 dataset files complete; collecting 2" in stdout
    assert "training the behaviour policy" not in stdout and "calibrating" not in stdout  # reused, not redone
    assert os.path.getmtime(dataset_path(data, env, "expert", 1)) == stamp  # complete files untouched
    for key, trajs in before.items():
        again = load_trajectories(env, key[1], key[0], data)
        for a, b in zip(trajs, again):
            for k in FIELDS:
                np.testing.assert_array_equal(a[k], b[k])


def test_bad_flags_give_one_line_errors(tmp_path):
    out = subprocess.run([sys.executable, "collect_data.py", "--env", "antdir", "--tasks", "55"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "error: --tasks must be in 0..54 for antdir" in out.stderr
    out = subprocess.run([sys.executable, "collect_data.py", "--env", "cheetah"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "cheetah" in out.stderr


def test_rollouts_do_not_depend_on_batching():
    """Episodes with random-action mixing are the same whether run one at a time or together, so
    --workers and --num-envs never change the data."""
    from behaviour_policy import BehaviourPolicy, behaviour_rollout

    policy = BehaviourPolicy("metaworld")
    args = ([45, 46, 45], [5, 6, 7], [0.5, 0.3, 0.5])
    one = behaviour_rollout(policy, *args, num_envs=1, record=True, rng_seed=9)
    three = behaviour_rollout(policy, *args, num_envs=3, record=True, rng_seed=9)
    np.testing.assert_array_equal(one[0], three[0])
    for a, b in zip(one[2], three[2]):
        np.testing.assert_array_equal(a["actions"], b["actions"])
    other = behaviour_rollout(policy, *args, num_envs=3, rng_seed=10)
    assert not np.array_equal(one[0], other[0])  # the mixing stream is seeded, not fixed


def test_behaviour_training_resumes_from_its_checkpoint(tmp_path):
    from behaviour_policy import train_sac

    ckpt, lines = str(tmp_path / "sac.train.pt"), []
    _, h1 = train_sac("halfcheetahdir", 5400, num_envs=8, eval_every=2000, ckpt_path=ckpt, log=lines.append)
    assert os.path.exists(ckpt) and h1[-1]["env_steps"] == 5400
    _, h2 = train_sac("halfcheetahdir", 5800, num_envs=8, eval_every=2000, ckpt_path=ckpt, log=lines.append)
    assert any("resuming SAC" in line and "at 5400 env steps" in line for line in lines)
    assert [r["env_steps"] for r in h2] == [r["env_steps"] for r in h1] + [5800]


def test_workers_split_tasks_merge_calibration_and_write_the_same_data(tmp_path):
    stdout, tasks = collect(tmp_path, "halfcheetahdir", "--workers", "2")
    beh = load_behaviour(tmp_path / "behaviour" / "halfcheetahdir.pt")
    assert not np.isnan(beh["medium_eps"][tasks]).any()  # both workers' calibrations were kept
    assert "| expert |" in stdout
    # the same behaviour file, one process, another data dir: identical files
    cmd = [sys.executable, "collect_data.py", "--env", "halfcheetahdir", "--data-dir", str(tmp_path / "one"),
           "--behaviour-dir", str(tmp_path / "behaviour"), "--num-trajs", "3", "--threads", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for q in QUALITIES:
        for t in tasks:
            a = load_trajectories("halfcheetahdir", t, q, str(tmp_path / "data"))
            b = load_trajectories("halfcheetahdir", t, q, str(tmp_path / "one"))
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x["actions"], y["actions"])


def test_a_changed_eps_or_policy_remakes_the_files_it_made(tmp_path):
    env = "halfcheetahdir"
    collect(tmp_path, env)
    path = tmp_path / "behaviour" / f"{env}.pt"
    beh = load_behaviour(path)
    beh["medium_eps"][1] = 0.123  # as --recalibrate would
    save_behaviour(beh, str(path))
    stdout, _ = collect(tmp_path, env)
    assert "3 of 4 dataset files complete; collecting 1" in stdout and "medium task  1" in stdout
    with np.load(dataset_path(str(tmp_path / "data"), env, "medium", 1)) as z:
        assert float(z["eps"]) == 0.123
    stdout, _ = collect(tmp_path, env, "--recalibrate", "--tasks", "0")
    assert "calibrating 1 tasks x 20 episodes" in stdout  # a test task: at least 20, whatever --calib-episodes
    stdout, _ = collect(tmp_path, env, "--retrain", "--seed", "1")  # a new policy: every file is remade
    assert "0 of 4 dataset files complete; collecting 4" in stdout


def test_a_validation_task_collects_one_quality_on_a_behaviour_file_made_before_validation_tasks(tmp_path):
    """A behaviour file with one entry per task of the old 50 is read NaN-padded, the validation task is
    calibrated into it, and --qualities expert writes only expert data (no summary: it compares both); with
    both qualities it writes no summary either (that describes the test tasks), and a call with fewer test
    tasks than the saved summary keeps it."""
    env = "halfcheetahvel"
    collect(tmp_path, env)
    path = str(tmp_path / "behaviour" / f"{env}.pt")
    beh = load_behaviour(path)
    save_behaviour({**beh, **{k: beh[k][:50] for k in ("random_return", "expert_return", "medium_eps")}}, path)
    assert len(load_behaviour(path)["medium_eps"]) == spec(env).num_tasks == 55
    val = spec(env).val_tasks[0]
    cmd = [sys.executable, "collect_data.py", "--env", env, "--data-dir", str(tmp_path / "data"), "--behaviour-dir",
           str(tmp_path / "behaviour"), "--num-trajs", "3", "--calib-episodes", "1", "--calib-iters", "2",
           "--threads", "1", "--tasks", str(val), "--qualities", "expert"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(load_trajectories(env, val, "expert", str(tmp_path / "data"))) == 3
    assert not os.path.exists(dataset_path(str(tmp_path / "data"), env, "medium", val))
    assert "no summary" in out.stdout
    assert np.isfinite(load_behaviour(path)["expert_return"][val])
    # both qualities of a validation task: still no summary, and the test tasks' summary is kept as it was
    summary = tmp_path / "data" / env / "summary.json"
    before = summary.read_bytes()
    out = subprocess.run(cmd[:-2], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no summary: it describes the test tasks" in out.stdout
    assert summary.read_bytes() == before
    # fewer test tasks than the summary covers (their files are complete): kept, not shrunk
    one_test_task = [*cmd[:-3], str(spec(env).test_tasks[0])]
    out = subprocess.run(one_test_task, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kept" in out.stdout and summary.read_bytes() == before
