"""Batched evaluation: many (task, episode) pairs stepped together, one model call per env step.

Conventions, shared by pretraining and every finetuning script so that their numbers compare:
- Eval seeds are fixed: episode i of task j resets with seed EVAL_SEED + 10_000 j + i (disjoint from
  the dataset seeds), so every algorithm meets the same initial states and MetaWorld goals.
- The prompt of a task is the last K* steps of the first trajectory of its finetuning set, and the
  target return-to-go of every episode of a task is the best return in that set (the agent only uses
  the few-shot data it is given). After each step the return-to-go drops by the reward, as in DT.
- MetaWorld success: the episode counts as a success if info["success"] was 1 at any step.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from common.data import trajectory_prompt
from common.envs import VecEnv, spec

EVAL_SEED = 9_000_000


def eval_seeds(task: int, episodes: int) -> np.ndarray:
    return EVAL_SEED + 10_000 * task + np.arange(episodes)


def task_prompt_and_target(trajs: list[dict], prompt_len: int) -> tuple[dict, float]:
    """(prompt, target return-to-go) of a task from its finetuning trajectories (see module doc)."""
    first = trajs[0]
    prompt = trajectory_prompt(first, prompt_len, start=max(0, len(first["rewards"]) - prompt_len))
    return prompt, float(max(t["rewards"].sum() for t in trajs))


@torch.no_grad()
def evaluate(act, env_name: str, tasks, episodes: int, targets, K: int, device="cpu") -> dict:
    """Run `episodes` episodes of every task in `tasks` at once.

    act(states, actions, rtg, timesteps, mask) -> (B, act_dim) gets the last K steps of all
    B = len(tasks) * episodes envs (row r is task tasks[r // episodes]) and returns their actions.
    targets: the target return-to-go of each task. Returns per-task arrays (tasks, episodes) of
    `returns`, `success` and `lengths`, plus `time_s`.
    """
    t0 = time.perf_counter()
    sp = spec(env_name)
    tasks = list(tasks)
    B, H = len(tasks) * episodes, sp.horizon
    envs = VecEnv(env_name, B)
    row_task = np.repeat(tasks, episodes)
    obs = envs.reset(row_task, np.concatenate([eval_seeds(t, episodes) for t in tasks]))
    f32 = dict(dtype=torch.float32, device=device)
    states = torch.zeros(B, H, sp.obs_dim, **f32)
    actions = torch.zeros(B, H, sp.act_dim, **f32)
    rtg = torch.zeros(B, H, **f32)
    rtg[:, 0] = torch.as_tensor(np.repeat(np.asarray(targets, dtype=np.float64), episodes), **f32)
    steps = torch.arange(H, device=device)
    returns, success, lengths = np.zeros(B), np.zeros(B), np.zeros(B, dtype=np.int64)
    for t in range(H):
        states[:, t] = torch.as_tensor(obs, **f32)
        lo, n = max(0, t - K + 1), min(t + 1, K)
        win = lambda x: torch.cat([x.new_zeros((B, K - n) + x.shape[2:]), x[:, lo:t + 1]], 1)  # noqa: E731
        mask = torch.cat([torch.zeros(B, K - n, **f32), torch.ones(B, n, **f32)], 1)
        a = act(win(states), win(actions), win(rtg), win(steps.expand(B, H)), mask)
        a_np = a.clamp(-1, 1).cpu().numpy().astype(np.float64)
        alive = ~envs.done
        obs, r, term, trunc, succ = envs.step(a_np)
        returns += r
        lengths += alive
        success = np.maximum(success, succ)
        actions[:, t] = a.clamp(-1, 1)  # what was executed
        if t + 1 < H:
            rtg[:, t + 1] = rtg[:, t] - torch.as_tensor(r, **f32)
        if envs.done.all():
            break
    shape = (len(tasks), episodes)
    return {"returns": returns.reshape(shape), "success": success.reshape(shape),
            "lengths": lengths.reshape(shape), "time_s": time.perf_counter() - t0}


def random_rollout_time(env_name: str, tasks, episodes: int, seed: int = 0) -> tuple[float, int]:
    """Wall time and env steps of the same episodes with uniform random actions: the raw simulator
    cost that `evaluate` is measured against."""
    sp, rng = spec(env_name), np.random.default_rng(seed)
    tasks = list(tasks)
    B = len(tasks) * episodes
    envs = VecEnv(env_name, B)
    t0, n = time.perf_counter(), 0
    envs.reset(np.repeat(tasks, episodes), np.concatenate([eval_seeds(t, episodes) for t in tasks]))
    for _ in range(sp.horizon):
        n += int((~envs.done).sum())
        envs.step(rng.uniform(-1, 1, (B, sp.act_dim)))
        if envs.done.all():
            break
    return time.perf_counter() - t0, n
