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
from common.files import atomic_write

EVAL_SEED = 9_000_000  # reporting episodes
VAL_SEED = 8_000_000  # validation episodes: selection only
# Episodes per evaluation (each of validation and reporting), per env: sized so that a task's 95% half-width
# is at most 10% of the env's expert-minus-random range (MetaWorld: 0.15 success) or the nearest affordable,
# from the per-episode spread that benchmark/eval_noise.py measures on the validation tasks
# (benchmark/results/eval_noise/README.md).
EVAL_EPISODES = {"halfcheetahvel": 10, "halfcheetahdir": 10, "antdir": 50, "metaworld": 46}


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


_VEC_ENVS: dict = {}  # the last (env, batch) of evaluate(): built once, reused by a run's later evaluations


def vec_env(env_name: str, num_envs: int) -> VecEnv:
    """evaluate()'s envs, kept for the next evaluation of the same size: building MetaWorld's 92 envs takes
    ~13 s (a MuJoCo model per env), a sixth of an evaluation. Every episode starts with a seeded reset, so a
    reused env runs the same episodes as a fresh one (tests/test_envs.py checks it)."""
    if (env_name, num_envs) not in _VEC_ENVS:
        _VEC_ENVS.clear()  # one set at a time: their memory is not kept for a size no longer used
        _VEC_ENVS[env_name, num_envs] = VecEnv(env_name, num_envs)
    return _VEC_ENVS[env_name, num_envs]


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
    envs = VecEnv(env_name, B, render_first=True) if render else vec_env(env_name, B)
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


@torch.no_grad()
def evaluate_policy(policy, env: str, task: int, target: float, episodes: int, device) -> dict:
    """Mean return (and MetaWorld success) of a TunedPolicy (in eval mode) on the task's reporting episodes
    and, under val_*, on its validation episodes: both sets stepped together, one model call per env step.
    With more than one episode also the per-episode sd (return_sd, val_return_sd): the report's half-widths."""
    act = lambda s, a, r, t, m: policy(s, a, r, t, m, last_only=True)  # noqa: E731
    ev = evaluate(act, env, [task, task], episodes, [target, target], policy.model.cfg.K, device,
                  seeds=[eval_seeds(task, episodes, "test"), eval_seeds(task, episodes, "val")])
    out = {"return": float(ev["returns"][0].mean()), "val_return": float(ev["returns"][1].mean())}
    if env == "metaworld":
        out.update(success=float(ev["success"][0].mean()), val_success=float(ev["success"][1].mean()))
    if episodes > 1:
        out.update(return_sd=float(ev["returns"][0].std(ddof=1)), val_return_sd=float(ev["returns"][1].std(ddof=1)))
    return out


def selection_key(point: dict) -> tuple:
    """What selection maximises at an evaluation: validation success then return (MetaWorld), or return."""
    return (point["val_success"], point["val_return"]) if "val_success" in point else (point["val_return"],)


def summarise(curve: list[dict], success: bool = False) -> dict:
    """A task's zero-shot, selected, best and final scores from its evaluation curve (see common/run.py).
    Selection looks only at the validation episodes; every reported number is a reporting score."""
    sel = max(curve[1:], key=selection_key)  # the first of equals, as the adapter Run.select keeps
    best = max(curve[1:], key=lambda c: (c["success"], c["return"]) if success else c["return"])
    out = {"zero_shot": curve[0]["return"], "selected": sel["return"], "best": best["return"],
           "final": curve[-1]["return"], "selected_step": sel["step"], "selected_val": sel["val_return"],
           "curve": curve}
    if success:
        out.update(zero_shot_success=curve[0]["success"], selected_success=sel["success"],
                   best_success=best["success"], final_success=curve[-1]["success"])
    return out


def render_episode(act, env_name: str, task: int, seed: int, target: float, K: int, device="cpu") -> list:
    """The RGB frames of one episode of act on task from reset seed `seed` (a video of what evaluate runs)."""
    return evaluate(act, env_name, [task], 1, [target], K, device, seeds=[[seed]], render=True)["frames"]


@torch.no_grad()
def save_video(policy, env: str, task: int, target: float, device, path: str) -> None:
    """The first reporting episode of a TunedPolicy, rendered, as a GIF at path (--capture-video)."""
    import imageio.v3 as iio

    was_training = policy.training
    policy.eval()
    act = lambda s, a, r, t, m: policy(s, a, r, t, m, last_only=True)  # noqa: E731
    frames = render_episode(act, env, task, int(eval_seeds(task, 1, "test")[0]), target, policy.model.cfg.K, device)
    policy.train(was_training)
    atomic_write(path, lambda f: iio.imwrite(f, frames[::2], extension=".gif", duration=40, loop=0))


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
