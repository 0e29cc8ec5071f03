import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)

import numpy as np  # noqa: E402


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
