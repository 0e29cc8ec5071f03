"""Batched evaluation: many (task, episode) pairs stepped together, one model call per env step.

Conventions, shared by pretraining and every finetuning script so that their numbers compare:
- Eval seeds are fixed: episode i of task j resets with seed EVAL_SEED + 10_000 j + i (disjoint from
  the dataset seeds), so every algorithm meets the same initial states and MetaWorld goals. These
  are the *reporting* episodes. *Validation* episodes (VAL_SEED + 10_000 j + i, disjoint from both)
  choose checkpoints and hyperparameters, so that no reported number is the maximum of itself.
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
from common.envs import TaskEnv, VecEnv, spec

EVAL_SEED = 9_000_000  # reporting episodes
VAL_SEED = 8_000_000  # validation episodes: selection only
# Episodes per evaluation (each of validation and reporting), per env: sized so that a task's 95% half-width
# is at most 10% of the env's expert-minus-random range (MetaWorld: 0.15 success) or the nearest affordable,
# from the per-episode spread that benchmark/eval_noise.py measures on the validation tasks
# (benchmark/results/eval_noise/README.md).
EVAL_EPISODES = {"halfcheetahvel": 10, "halfcheetahdir": 10, "antdir": 50, "metaworld": 30}


def eval_seeds(task: int, episodes: int, split: str = "test") -> np.ndarray:
    """Reset seeds of a task's evaluation episodes; split "test" (reported) or "val" (selection)."""
    if split not in ("test", "val"):
        raise ValueError(f"unknown eval split {split!r}; choose test or val")
    return (EVAL_SEED if split == "test" else VAL_SEED) + 10_000 * task + np.arange(episodes)


def task_prompt_and_target(trajs: list[dict], prompt_len: int) -> tuple[dict, float]:
    """(prompt, target return-to-go) of a task from its finetuning trajectories (see module doc)."""
    first = trajs[0]
    prompt = trajectory_prompt(first, prompt_len, start=max(0, len(first["rewards"]) - prompt_len))
    return prompt, float(max(t["rewards"].sum() for t in trajs))


@torch.no_grad()
def evaluate(act, env_name: str, tasks, episodes: int, targets, K: int, device="cpu", seeds=None,
             render: bool = False) -> dict:
    """Run `episodes` episodes of every task in `tasks` at once.

    act(states, actions, rtg, timesteps, mask) -> (B, act_dim) gets the last K steps of all
    B = len(tasks) * episodes envs (row r is task tasks[r // episodes]) and returns their actions.
    targets: the target return-to-go of each task. seeds: (tasks, episodes) reset seeds (default: the
    reporting seeds, eval_seeds(task, episodes)). Returns per-task arrays (tasks, episodes) of
    `returns`, `success` and `lengths`, plus `time_s`, `step_rewards` (B, steps) and, with render, `frames`:
    the first episode's RGB frames.
    """
    sp = spec(env_name)
    tasks = list(tasks)
    B, H = len(tasks) * episodes, sp.horizon
    envs = VecEnv(env_name, B, render_first=render)
    t0 = time.perf_counter()  # time_s: the episodes, not building the envs
    row_task = np.repeat(tasks, episodes)
    if seeds is None:
        seeds = [eval_seeds(t, episodes) for t in tasks]
    obs = envs.reset(row_task, np.concatenate([np.asarray(x).reshape(episodes) for x in seeds]))
    f32 = dict(dtype=torch.float32, device=device)
    # histories with K - 1 steps of zero padding in front: the window of step t is the view
    # [t, t + K), already left-padded (mask 0) for t < K - 1
    L = H + K - 1
    states = torch.zeros(B, L, sp.obs_dim, **f32)
    actions = torch.zeros(B, L, sp.act_dim, **f32)
    rtg = torch.zeros(B, L, **f32)
    timesteps = torch.cat([torch.zeros(K - 1, dtype=torch.long), torch.arange(H)]).to(device).expand(B, L)
    mask = torch.cat([torch.zeros(K - 1), torch.ones(H)]).to(**f32).expand(B, L)
    target = torch.as_tensor(np.repeat(np.asarray(targets, dtype=np.float64), episodes), **f32)
    returns, success, lengths = np.zeros(B), np.zeros(B), np.zeros(B, dtype=np.int64)
    frames, rewards = [envs.envs[0].render()] if render else [], []
    for t in range(H):
        i = t + K - 1
        states[:, i] = torch.as_tensor(obs, **f32)
        rtg[:, i] = target - torch.as_tensor(returns, **f32)  # DT: the target minus the reward so far
        w = slice(t, t + K)
        a = act(states[:, w], actions[:, w], rtg[:, w], timesteps[:, w], mask[:, w]).clamp(-1, 1)
        actions[:, i] = a  # what was executed
        alive = ~envs.done
        obs, r, term, trunc, succ = envs.step(a.cpu().numpy().astype(np.float64))
        returns += r
        rewards.append(r)
        lengths += alive
        success = np.maximum(success, succ)
        if render and alive[0]:
            frames.append(envs.envs[0].render())
        if envs.done.all():
            break
    shape = (len(tasks), episodes)
    return {"returns": returns.reshape(shape), "success": success.reshape(shape),
            "lengths": lengths.reshape(shape), "time_s": time.perf_counter() - t0, "frames": frames,
            "step_rewards": np.stack(rewards, 1)}  # (B, steps run): each env's reward per step, 0 after its end


def render_episode(act, env_name: str, task: int, seed: int, target: float, K: int, device="cpu") -> list:
    """The RGB frames of one episode of act on task from reset seed `seed` (a video of what evaluate runs)."""
    return evaluate(act, env_name, [task], 1, [target], K, device, seeds=[[seed]], render=True)["frames"]


def check_rendering(env_name: str) -> None:
    """A one-line error, before any training, where MuJoCo cannot render (no OpenGL backend)."""
    import os

    try:
        env = TaskEnv(env_name, spec(env_name).test_tasks[0], render_mode="rgb_array")
        env.reset(seed=0, options={"task": spec(env_name).test_tasks[0]})
        frame = env.render()
        assert frame is not None and frame.ndim == 3
    except Exception as e:  # noqa: BLE001 (GL failures come as many exception types)
        raise RuntimeError(f"--capture-video cannot render here (MUJOCO_GL={os.environ.get('MUJOCO_GL', 'unset')}: "
                           f"{type(e).__name__}); install an OpenGL backend (libegl1 or libosmesa6) and set "
                           f"MUJOCO_GL=egl or osmesa, or drop --capture-video") from None


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


ONLINE_SEED = 7_000_000  # online finetuning's rollouts: disjoint from the data's, validation and reporting seeds


def online_seed(task: int, iteration: int) -> int:
    """Reset seed of a task's online rollout group `iteration` (every member of a group starts from it)."""
    return ONLINE_SEED + 10_000 * task + iteration


@torch.no_grad()
def sample_episodes(policy, env_name: str, task: int, seeds, n: int, target: float, K: int, std: float,
                    gen: torch.Generator, device="cpu") -> dict:
    """n episodes of the stochastic policy N(mu(s), std^2 I) from reset seeds `seeds` (one int: all n start
    from it; or n of them), one model call per env step for the n, for online finetuning. Returns the valid
    steps, episode by episode in time order: the K-step windows the policy saw (states, actions, rtg,
    timesteps, mask), the sampled `act` (before the env clips it to [-1, 1]), `mu`, `reward`, the step's
    `episode` index and `last` (its episode's last step), plus per episode `returns` and `success`, and
    `env_steps`."""
    rec = []

    def act(s, a, r, t, m):
        mu = policy(s, a, r, t, m, last_only=True)
        x = mu + std * torch.randn(mu.shape, generator=gen, device=mu.device)
        rec.append((s.clone(), a.clone(), r.clone(), t.clone(), m.clone(), x, mu))
        return x

    seeds = [int(seeds)] * n if np.ndim(seeds) == 0 else [int(x) for x in seeds]
    ev = evaluate(act, env_name, [task], n, [target], K, device, seeds=[seeds])
    lengths = torch.as_tensor(ev["lengths"].reshape(n), device=device)
    t = torch.arange(len(rec), device=device)[None]
    valid = t < lengths[:, None]  # (n, T): each episode's steps before its end
    out = {k: torch.stack([x[i] for x in rec], 1)[valid] for i, k in
           enumerate(("states", "actions", "rtg", "timesteps", "mask", "act", "mu"))}
    out["reward"] = torch.as_tensor(ev["step_rewards"], dtype=torch.float32, device=device)[valid]
    out["episode"] = torch.arange(n, device=device)[:, None].expand(n, len(rec))[valid]
    out["last"] = (t == lengths[:, None] - 1).expand(n, len(rec))[valid]
    out.update(returns=ev["returns"].reshape(n), success=ev["success"].reshape(n), env_steps=int(lengths.sum()))
    return out


def subsample_steps(n: int, batch_size: int, minibatches: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """Indices of minibatches x batch_size distinct steps out of an iteration's n (all n when minibatches is 0
    or they would cover n), in random order: the online scripts draw them once per iteration and reshuffle
    them into minibatches on every pass, so the update's cost does not grow with the rollouts' length."""
    perm = torch.randperm(n, generator=gen, device=device)
    return perm if minibatches == 0 else perm[:minibatches * batch_size]
