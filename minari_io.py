"""Export our offline datasets to Minari (the Farama format for offline RL datasets), and import them back.

    python minari_io.py export --env antdir --quality expert     # data/antdir/expert/*.npz -> rft/antdir/expert-v0
    python minari_io.py import --env antdir --quality expert     # rft/antdir/expert-v0 -> data/antdir/expert/*.npz

One Minari dataset per (env, quality), every task collected (or --tasks), under Minari's root
($MINARI_DATASETS_PATH, default ~/.minari/datasets). Each trajectory is one episode: its T + 1
observations (the T observations and the last next observation), actions, rewards, terminations and
truncations (our files' terminals and timeouts, Minari's names), its reset seed, and options
{"task": i}, so that env.reset(seed=seed, options=options) on the recovered env starts it again; its
infos hold the task, the medium eps, the episode's return and success. The env is registered as a gymnasium
id (common/envs.py: rft/HalfCheetahVel-v0, rft/HalfCheetahDir-v0, rft/AntDir-v0, rft/MetaWorldML45-v0),
so MinariDataset.recover_environment() works. ref_min_score / ref_max_score: the behaviour policy's
random and expert returns averaged over the dataset's tasks (per task in the dataset card, the
dataset's description). Import writes the same npz files collect_data.py writes (lossless, tested);
training reads the npz files, which load faster (see README).
"""
from __future__ import annotations

import importlib.metadata
import os
import zipfile
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import tyro
import numpy as np

from common.cli import run as cli
from common.data import QUALITIES, dataset_path, load_behaviour, save_trajectories
from common.envs import ENV_NAMES, GYM_IDS, spec
from common.files import check_folder


@dataclass
class Args:
    direction: tyro.conf.Positional[Literal["export", "import"]]
    """export: npz files -> a Minari dataset; import: a Minari dataset -> npz files"""
    env: Literal["halfcheetahvel", "halfcheetahdir", "antdir", "metaworld"] = "halfcheetahvel"
    """env family"""
    quality: Literal["medium", "expert"] = "expert"
    """data regime"""
    tasks: tuple[int, ...] = ()
    """tasks to export (default: every task whose file exists); import always takes every task"""
    data_dir: str = "data"
    """dataset root of the npz files (made by collect_data.py)"""
    behaviour_dir: str = "behaviour"
    """behaviour policies (random and expert returns for the reference scores)"""
    dataset_id: str = ""
    """Minari dataset id (default: rft/<env>/<quality>-v0)"""
    overwrite: bool = False
    """replace an existing Minari dataset (export) or existing npz files (import)"""


def dataset_id(args: Args) -> str:
    return args.dataset_id or f"rft/{args.env}/{args.quality}-v0"


def card(env: str, quality: str, tasks: list[int], files: dict, beh: dict) -> str:
    """The dataset card (Minari's description): where the data come from and what they hold."""
    s = spec(env)
    z0 = files[tasks[0]]
    algo = beh["train_config"]["algo"]
    rows = "\n".join(f"| {t} | {s.params[t]} | {'test' if t in s.test_tasks else 'pretraining'} | "
                     f"{len(files[t]['episode_returns'])} | {np.mean(files[t]['episode_returns']):.1f} | "
                     f"{np.mean(files[t]['episode_success']):.2f} | {float(files[t]['eps']):.3f} | "
                     f"{beh['random_return'][t]:.1f} | {beh['expert_return'][t]:.1f} |" for t in tasks)
    return f"""# rft {env} {quality}

Offline data of the {env} task family ({GYM_IDS[env]}), made by collect_data.py of rft-agents.
Behaviour policy: {algo} ({beh['train_config']['total_steps']} env steps; fingerprint {str(z0['behaviour_id'])}).
Quality: {quality}: {'the behaviour policy acting greedily' if quality == 'expert' else 'the behaviour policy with a per-task probability eps of a uniform random action, eps calibrated by bisection so the mean return is about halfway between random and expert (docs/protocol.md)'}.
Episodes: reset seed {'5,000,000' if quality == 'medium' else '0'} + 10,000 x task + i, options {{"task": task}}; each ends
at the horizon ({s.horizon} steps, truncation) or at a termination. ref_min_score / ref_max_score: the
random and expert returns averaged over these tasks; per task below.

| task | parameter | split | episodes | mean return | success | eps | random return | expert return |
|---|---|---|---|---|---|---|---|---|
{rows}
"""


def minari_root() -> str:
    return os.environ.get("MINARI_DATASETS_PATH") or os.path.join(os.path.expanduser("~"), ".minari", "datasets")


def check_minari_root() -> None:
    """A one-line error naming MINARI_DATASETS_PATH, before any work, if Minari cannot write its datasets there."""
    root = minari_root()
    try:
        check_folder(root, "MINARI_DATASETS_PATH")
    except ValueError as e:
        raise ValueError(f"{e} (Minari's dataset root, now {root})") from None


def export(args: Args) -> None:
    import minari
    from minari.data_collector import EpisodeBuffer

    did = dataset_id(args)
    n_tasks = spec(args.env).num_tasks
    bad = [t for t in args.tasks if not 0 <= t < n_tasks]
    if bad:
        raise ValueError(f"--tasks {bad} are not {args.env} tasks (0..{n_tasks - 1})")
    dup = sorted({t for t in args.tasks if args.tasks.count(t) > 1})
    if dup:
        raise ValueError(f"--tasks lists {dup} more than once; name each task once")
    check_minari_root()
    if did in minari.list_local_datasets() and not args.overwrite:
        raise ValueError(f"Minari dataset {did} exists; pass --overwrite to replace it, or another --dataset-id")
    tasks = list(args.tasks) or [t for t in range(spec(args.env).num_tasks)
                                  if os.path.exists(dataset_path(args.data_dir, args.env, args.quality, t))]
    if not tasks:
        raise FileNotFoundError(f"no {args.env} {args.quality} data in {args.data_dir}; make it with: "
                                f"python collect_data.py --env {args.env}")
    files, buffers = {}, []
    for t in tasks:
        path = dataset_path(args.data_dir, args.env, args.quality, t)
        if not os.path.exists(path):
            raise FileNotFoundError(f"dataset {path} is missing; make it with: python collect_data.py --env {args.env} "
                                    f"--tasks {t}")
        try:
            with np.load(path) as z:
                files[t] = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise ValueError(f"{path} is damaged ({type(e).__name__}); delete it and remake it with: python "
                             f"collect_data.py --env {args.env} --tasks {t}") from None
        f = files[t]
        ends = np.flatnonzero(f["terminals"] | f["timeouts"]) + 1
        for i, (a, b) in enumerate(zip(np.r_[0, ends[:-1]], ends)):
            n = b - a
            const = lambda v, dt: np.full(n + 1, v, dtype=dt)  # noqa: E731  (per step: Minari's infos)
            buffers.append(EpisodeBuffer(
                id=len(buffers), seed=int(f["seeds"][i]), options={"task": int(t)},
                observations=np.concatenate([f["observations"][a:b], f["next_observations"][b - 1:b]]),
                actions=f["actions"][a:b], rewards=f["rewards"][a:b],
                terminations=f["terminals"][a:b], truncations=f["timeouts"][a:b],
                infos={"task": const(t, np.int64), "eps": const(float(f["eps"]), np.float64),
                       "episode_success": const(float(f["episode_success"][i]), np.float64),
                       "episode_return": const(float(f["episode_returns"][i]), np.float64)}))  # the rollout's own sum
    beh = load_behaviour(os.path.join(args.behaviour_dir, f"{args.env}.pt"))
    if args.overwrite and did in minari.list_local_datasets():
        minari.delete_dataset(did)
    s = spec(args.env)
    env = gym.make(GYM_IDS[args.env], task=tasks[0])
    obs_space = gym.spaces.Box(-np.inf, np.inf, (s.obs_dim,), np.float32)  # stored as float32, as in our files
    ds = minari.create_dataset_from_buffers(
        did, buffers, env=env, eval_env=env, algorithm_name=f"{beh['train_config']['algo']} behaviour policy ({args.quality})",
        author="rft-agents", author_email="see CITATION.cff", code_permalink="collect_data.py of rft-agents",
        observation_space=obs_space, action_space=env.action_space,
        ref_min_score=float(np.mean(beh["random_return"][tasks])), ref_max_score=float(np.mean(beh["expert_return"][tasks])),
        description=card(args.env, args.quality, tasks, files, beh),
        requirements=[f"{p}=={importlib.metadata.version(p)}" for p in ("gymnasium", "mujoco", "metaworld")])
    env.close()
    print(f"exported {len(buffers)} episodes of {len(tasks)} tasks ({ds.total_steps} steps) -> Minari dataset {did}")


def import_(args: Args) -> None:
    import minari

    did = dataset_id(args)
    if did not in minari.list_local_datasets():
        raise FileNotFoundError(f"no local Minari dataset {did}; make it with: python minari_io.py export --env "
                                f"{args.env} --quality {args.quality}")
    try:
        ds = minari.load_dataset(did)
        meta = {m["id"]: m for m in ds.storage.get_episode_metadata(ds.episode_indices)}
        by_task: dict[int, list] = {}
        for ep in ds.iterate_episodes():
            by_task.setdefault(int(ep.infos["task"][0]), []).append(ep)
    except Exception as e:  # noqa: BLE001 (a truncated HDF5 or metadata file: OSError, KeyError, ValueError, ...)
        raise ValueError(f"Minari dataset {did} under {minari_root()} is damaged ({type(e).__name__}); export it "
                         f"again: python minari_io.py export --env {args.env} --quality {args.quality} --overwrite") from None
    check_folder(os.path.join(args.data_dir, args.env, args.quality), "--data-dir")
    bid = str(ds.storage.metadata["description"]).split("fingerprint ")[1].split(")")[0]
    s = spec(args.env)
    for t, eps in sorted(by_task.items()):
        path = dataset_path(args.data_dir, args.env, args.quality, t)
        if os.path.exists(path) and not args.overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it, or another --data-dir")
        trajs = [{"observations": e.observations[:-1], "next_observations": e.observations[1:], "actions": e.actions,
                  "rewards": e.rewards, "terminals": e.terminations, "timeouts": e.truncations} for e in eps]
        save_trajectories(path, trajs, env=args.env, task=t, param=str(s.params[t]), quality=args.quality,
                          eps=float(eps[0].infos["eps"][0]), seeds=np.array([meta[e.id]["seed"] for e in eps]),
                          behaviour_id=bid, episode_returns=np.array([float(e.infos["episode_return"][0]) for e in eps]),
                          episode_success=np.array([float(e.infos["episode_success"][0]) for e in eps]))
    print(f"imported {ds.total_episodes} episodes of {len(by_task)} tasks from Minari dataset {did} -> "
          f"{os.path.join(args.data_dir, args.env, args.quality)}")


def main(args: Args) -> None:
    if args.env not in ENV_NAMES or args.quality not in QUALITIES:
        raise ValueError(f"--env must be one of {ENV_NAMES} and --quality one of {QUALITIES}")
    export(args) if args.direction == "export" else import_(args)


if __name__ == "__main__":
    cli(main, Args)
