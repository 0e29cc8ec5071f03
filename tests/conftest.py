"""What the tests share: the project root on the path, one torch thread, running a benchmark script, fake
datasets with the envs' real dimensions, and the tiny pretrained model with its data (the `setup` fixture) that
the finetuning tests run on."""
import importlib
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(1)

import numpy as np  # noqa: E402

from common.envs import spec  # noqa: E402

ENV = "halfcheetahvel"  # the fastest env: every finetuning test runs on it
TASK = spec(ENV).test_tasks[0]


def benchmark_script(name, *bash_args, **env):
    """benchmark/NAME.sh (or, with name None, `bash BASH_ARGS`) in the project root with settings (SCALE,
    ROOT_DIR, DRY_RUN, ...) from the environment; one torch thread."""
    full = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    args = bash_args if name is None else [os.path.join("benchmark", f"{name}.sh")]
    return subprocess.run(["bash", *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=600)


def make_fake_data(data_dir, env: str, tasks, n_trajs: int = 3, length: int = 40, quality: str = "expert", seed: int = 0):
    """Synthetic trajectories with the env's real dimensions, saved where load_trajectories looks.
    Actions are a fixed smooth function of the state and the task, so a model can learn them."""
    from common.data import dataset_path, save_trajectories
    from common.envs import spec

    sp = spec(env)
    w = np.random.default_rng(123).normal(size=(sp.obs_dim, sp.act_dim)) / np.sqrt(sp.obs_dim)
    for task in tasks:
        rng = np.random.default_rng(seed + 1000 * task)
        trajs = []
        for _ in range(n_trajs):
            obs = rng.normal(size=(length + 1, sp.obs_dim)).astype(np.float32)
            act = np.tanh(obs[:-1] @ w + 0.1 * (task % 5)).astype(np.float32)
            rew = rng.normal(size=length).astype(np.float32)
            term = np.zeros(length, bool)
            tout = np.zeros(length, bool)
            tout[-1] = True
            trajs.append({"observations": obs[:-1], "next_observations": obs[1:], "actions": act,
                          "rewards": rew, "terminals": term, "timeouts": tout})
        # the metadata collect_data.py writes beside the trajectories
        save_trajectories(dataset_path(str(data_dir), env, quality, task), trajs, env=env, task=task, quality=quality,
                          param=str(sp.params[task]), eps=0.0 if quality == "expert" else 0.3,
                          seeds=1000 * task + np.arange(n_trajs), behaviour_id="0123456789ab",
                          episode_returns=np.array([t["rewards"].sum(dtype=np.float64) for t in trajs]),
                          episode_success=np.zeros(n_trajs))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Fake data for two pretraining tasks, the validation and the test tasks, and a tiny pretrained model."""
    import pretrain_pdt

    root = tmp_path_factory.mktemp("algos")
    sp = spec(ENV)
    make_fake_data(root / "data", ENV, list(sp.train_tasks[:2]) + list(sp.finetune_tasks), n_trajs=6, length=30)
    make_fake_data(root / "data", ENV, list(sp.test_tasks), n_trajs=6, length=30, quality="medium", seed=7)
    args = pretrain_pdt.Args(env=ENV, data_dir=str(root / "data"), run_dir=str(root / "pre_runs"),
                             out=str(root / "pre.pt"), train_tasks=2, num_trajs=6, n_layer=1, n_embd=16, K=5,
                             batch_size=8, total_steps=10, eval_every=10, eval_episodes=1, threads=1)
    pretrain_pdt.main(args)
    return root


def run_algo(root, algo, run_dir="runs", **kw):
    """A tiny finetuning run of script `algo` (its main, in this process) on the `setup` fixture's files."""
    mod = importlib.import_module(algo)
    base = dict(env=ENV, tasks=(TASK,), num_trajs=4, total_steps=4, eval_every=2, eval_episodes=1, batch_size=4,
                data_dir=str(root / "data"), run_dir=str(root / run_dir), pretrained=str(root / "pre.pt"), threads=1)
    base.update(kw)
    return mod.main(mod.Args(**base))
