"""Offline datasets: layout, loading, and the transforms every algorithm needs.

Layout (made by collect_data.py, never in git): one compressed file per (env, quality, task),

    <data_dir>/<env>/<quality>/task_<NN>.npz

holding the trajectories concatenated in order with D4RL's field names: observations,
next_observations, actions, rewards, terminals (true environment termination), timeouts (horizon
reached; Minari's terminations and truncations: minari_io.py converts both ways); a trajectory ends
at the first row where terminals or timeouts is set. Per-trajectory
metadata: episode_returns, episode_success, seeds; and env, task, param, quality, eps, behaviour_id
(a fingerprint of the behaviour policy that made the file).
"""
from __future__ import annotations

import os
import zipfile

import numpy as np
import torch

from common.envs import spec
from common.files import atomic_torch_save, atomic_write

QUALITIES = ("medium", "expert")
FIELDS = ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")


def collect_command(env: str, data_dir: str) -> str:
    extra = "" if os.path.normpath(data_dir) == "data" else f" --data-dir {data_dir}"
    return f"python collect_data.py --env {env}{extra}"


def dataset_path(data_dir: str, env: str, quality: str, task: int) -> str:
    return os.path.join(data_dir, env, quality, f"task_{task:02d}.npz")


def save_trajectories(path: str, trajs: list[dict], **meta) -> None:
    """Write atomically: a killed run leaves either the old file or none, never half a file."""
    flat = {k: np.concatenate([t[k] for t in trajs]) for k in FIELDS}
    flat["terminals"], flat["timeouts"] = flat["terminals"].astype(bool), flat["timeouts"].astype(bool)
    for k in ("observations", "next_observations", "actions", "rewards"):
        flat[k] = flat[k].astype(np.float32)
    atomic_write(path, lambda f: np.savez_compressed(f, **flat, **{k: np.asarray(v) for k, v in meta.items()}))


BEHAVIOUR_ARRAYS = ("random_return", "expert_return", "medium_eps")  # per task, NaN where not calibrated yet


def load_behaviour(path: str) -> dict:
    """A behaviour-policy file (behaviour/<env>.pt, collect_data.py) read with torch.load(weights_only=True),
    which runs no pickled code; its per-task arrays come back as numpy, one entry per task of the
    family (NaN-padded for tasks added to the family after the file was made, e.g. validation tasks)."""
    import torch

    beh = torch.load(path, map_location="cpu", weights_only=True)
    n = spec(beh["env"]).num_tasks

    def per_task(v) -> np.ndarray:
        v = np.array(v, dtype=np.float64)
        return np.concatenate([v, np.full(max(0, n - len(v)), np.nan)])

    return {**beh, **{k: per_task(beh[k]) for k in BEHAVIOUR_ARRAYS}}


def save_behaviour(beh: dict, path: str) -> None:
    """Write a behaviour-policy file atomically, its per-task arrays as tensors (so weights_only loads it)."""
    import torch

    atomic_torch_save({**beh, **{k: torch.as_tensor(np.asarray(beh[k], dtype=np.float64)) for k in BEHAVIOUR_ARRAYS}},
                      path)


def split_trajectories(flat: dict) -> list[dict]:
    ends = np.flatnonzero(flat["terminals"] | flat["timeouts"]) + 1
    starts = np.concatenate([[0], ends[:-1]])
    return [{k: flat[k][a:b] for k in FIELDS} for a, b in zip(starts, ends)]


def load_trajectories(env: str, task: int, quality: str = "expert", data_dir: str = "data",
                      num_trajs: int | None = None) -> list[dict]:
    """The first num_trajs (default: all) trajectories of (env, task, quality), as dicts of arrays.

    Raises a one-line error naming the command that makes the data when it is missing or corrupt,
    and when num_trajs exceeds what the file holds.
    """
    s = spec(env)
    if quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}; choose one of {', '.join(QUALITIES)}")
    if not 0 <= task < s.num_tasks:
        raise ValueError(f"{env} has tasks 0..{s.num_tasks - 1}, got {task}")
    path = dataset_path(data_dir, env, quality, task)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset {path} is missing; make it with: {collect_command(env, data_dir)}")
    try:
        with np.load(path) as z:
            flat = {k: z[k] for k in FIELDS}
            made_for = str(z["env"]) if "env" in z.files else env
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise RuntimeError(f"dataset {path} is corrupt ({type(e).__name__}); delete it and rerun: "
                           f"{collect_command(env, data_dir)}") from None
    shapes = (flat["observations"].shape[1:], flat["actions"].shape[1:])
    if made_for != env or shapes != ((s.obs_dim,), (s.act_dim,)):
        raise ValueError(f"dataset {path} holds {made_for} data with observations {shapes[0]} and actions {shapes[1]}; "
                         f"{env} has observations ({s.obs_dim},) and actions ({s.act_dim},): point --data-dir at "
                         f"{env} data, or delete the file and run {collect_command(env, data_dir)}")
    trajs = split_trajectories(flat)
    if num_trajs is not None:
        if num_trajs > len(trajs):
            raise ValueError(f"--num-trajs {num_trajs} exceeds the {len(trajs)} trajectories in {path}; "
                             f"use at most {len(trajs)} or recollect with --num-trajs {num_trajs}")
        trajs = trajs[:num_trajs]
    return trajs


def returns_to_go(rewards: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """rtg[t] = sum_{t' >= t} gamma^(t'-t) r[t'] (undiscounted by default, as in Decision Transformer)."""
    rtg = np.zeros(len(rewards), dtype=np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] + gamma * acc
        rtg[t] = acc
    return rtg


def sparsify(traj: dict) -> dict:
    """Sparse-reward setting (paper section 6): all of a trajectory's reward moved to its last step."""
    out = dict(traj)
    r = np.zeros_like(traj["rewards"])
    r[-1] = traj["rewards"].sum()
    out["rewards"] = r
    return out


def state_stats(trajs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    obs = np.concatenate([t["observations"] for t in trajs])
    return obs.mean(0), obs.std(0) + 1e-6


def pack(trajs: list[dict]) -> dict:
    """Concatenate trajectories once (with their returns-to-go) so that batches are gathered with a
    few vectorised index operations instead of a Python loop over samples."""
    lengths = np.array([len(t["rewards"]) for t in trajs])
    return {"lengths": lengths, "starts": np.concatenate([[0], np.cumsum(lengths)[:-1]]),
            "states": np.concatenate([t["observations"] for t in trajs]).astype(np.float32),
            "actions": np.concatenate([t["actions"] for t in trajs]).astype(np.float32),
            "rewards": np.concatenate([t["rewards"] for t in trajs]).astype(np.float32),
            "rtg": np.concatenate([returns_to_go(t["rewards"]) for t in trajs]).astype(np.float32),
            "timesteps": np.concatenate([np.arange(n) for n in lengths]),
            "has_next": np.concatenate([np.arange(n) < n - 1 for n in lengths]).astype(np.float32),
            **({"next_states": np.concatenate([t["next_observations"] for t in trajs]).astype(np.float32),
                "terminals": np.concatenate([t["terminals"] for t in trajs]).astype(np.float32)}
               if "next_observations" in trajs[0] else {})}


def gather(packed: dict, traj: np.ndarray, end: np.ndarray, length: int) -> dict:
    """For each i, steps [end_i - length, end_i) of trajectory traj_i, left-padded with zeros
    (mask 0, timestep 0) where the window reaches before the trajectory's start."""
    offs = np.arange(-length, 0)
    pos = end[:, None] + offs[None, :]  # step index within the trajectory
    valid = pos >= 0
    flat = packed["starts"][traj][:, None] + np.maximum(pos, 0)
    out = {k: v[flat] * (valid if v.ndim == 1 else valid[..., None])
           for k, v in packed.items() if k not in ("lengths", "starts")}
    out["mask"] = valid.astype(np.float32)
    out["index"] = flat  # flat (packed) index of every step; padded steps point at the trajectory's first
    return out


def sample_windows(trajs: list[dict] | dict, K: int, batch_size: int, rng: np.random.Generator) -> dict:
    """batch_size random K-step windows (trajectory chosen in proportion to its length, as in DT;
    window end uniform over the trajectory). `trajs` is a list or pack(list). Returns a dict of
    arrays with a leading batch axis; windows near the start are left-padded. `index` (B, K) is the
    flat index of every step (for per-step tables such as advantages), `window` (B,) that of the last."""
    p = trajs if isinstance(trajs, dict) else pack(trajs)
    ti = rng.choice(len(p["lengths"]), batch_size, p=p["lengths"] / p["lengths"].sum())
    end = (rng.random(batch_size) * p["lengths"][ti]).astype(np.int64) + 1  # window ends at step end-1
    out = gather(p, ti, end, K)
    out["traj"] = ti
    out["window"] = p["starts"][ti] + end - 1  # flat index of the window's last step: one window per step
    return out


def sample_batch(packed: dict, K: int, batch_size: int, rng: np.random.Generator, device) -> dict[str, torch.Tensor]:
    """The finetuning scripts' batch: batch_size random K-step windows of a task's pack()ed data (sample_windows),
    as tensors on device. The contract every script relies on (B windows of K steps):
    - states (B, K, obs), actions (B, K, act), rewards, rtg (B, K), timesteps (B, K) long: the window's steps in
      time order, left-padded with zeros where it reaches before its trajectory's start;
    - mask (B, K): 1 on real steps, 0 on padding; a loss averages over it (masked_mean);
    - next_states (B, K, obs), terminals (B, K): each step's successor state and whether the env terminated
      there (a true termination, not a timeout: bootstrap unless terminals is 1). The next step of step k is
      step k + 1 of the same window when mask[:, k + 1] is 1; the window's last step has it outside;
    - has_next (B, K): 0 at a trajectory's last step;
    - index (B, K) long: each step's flat (pack) index, for per-step tables (PPO's advantages); padding points
      at the trajectory's first step;
    - window (B,) long: the flat index of the window's last step; the data hold one window per step, so a
      table over every window (a frozen policy's actions: pi_ref) is looked up by it;
    - traj (B,) long: the window's trajectory (GRPO's per-trajectory advantage)."""
    b = sample_windows(packed, K, batch_size, rng)
    return {k: torch.as_tensor(v, device=device,
                               dtype=torch.long if k in ("timesteps", "traj", "window", "index") else torch.float32)
            for k, v in b.items()}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the valid (mask 1) steps of a batch of windows."""
    return (x * mask).sum() / mask.sum()


def sample_prompts(packed: dict, traj: np.ndarray, length: int, rng: np.random.Generator) -> dict:
    """A random `length`-step segment of each given trajectory (Prompt-DT's stochastic prompt)."""
    L = packed["lengths"][traj]
    lo = np.minimum(L, length)
    end = lo + (rng.random(len(traj)) * (L - lo + 1)).astype(np.int64)
    return gather(packed, traj, end, length)


def trajectory_prompt(traj: dict, length: int = 5, start: int | None = None,
                      rng: np.random.Generator | None = None) -> dict:
    """A K*-step trajectory prompt (Prompt-DT): a segment of a trajectory of the same task, from
    `start`, or a random start when rng is given, or the first steps otherwise."""
    T = len(traj["rewards"])
    if start is None:
        start = int(rng.integers(0, max(1, T - length + 1))) if rng is not None else 0
    end = min(start + length, T)
    seg = gather(pack([traj]), np.array([0]), np.array([end]), end - start)
    pad = length - (end - start)  # a trajectory shorter than the prompt: left-pad
    return {k: np.concatenate([np.zeros((pad,) + v.shape[2:], v.dtype), v[0]]) for k, v in seg.items()}


def tq_saco(trajs: list[dict], reference: list[dict], random_return: float, expert_return: float,
            bins: float = 0.5, dims: int = 8) -> tuple[float, float]:
    """Dataset metrics of Schweighofer et al. (2022), as in the paper's Table 2.

    TQ (trajectory quality) = (mean return - random return) / (expert return - random return).
    SACo (state-action coverage) = unique (s, a) cells in the dataset / unique cells in the reference
    buffer. Continuous (s, a) are standardised with the reference buffer's statistics, projected to
    `dims` dimensions by a fixed random Gaussian matrix, and binned on a grid of `bins` std.
    """
    ret = np.mean([t["rewards"].sum() for t in trajs])
    tq = (ret - random_return) / (expert_return - random_return)

    def sa(ts):
        return np.concatenate([np.concatenate([t["observations"], t["actions"]], 1) for t in ts])

    ref = sa(reference)
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    proj = np.random.default_rng(0).standard_normal((ref.shape[1], dims)) / np.sqrt(ref.shape[1])

    def cells(x):
        return len(np.unique(np.floor(((x - mu) / sd) @ proj / bins).astype(np.int64), axis=0))

    return float(tq), float(cells(sa(trajs)) / cells(ref))
