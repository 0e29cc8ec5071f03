"""Make the offline datasets: medium and expert trajectories for every task of one env family.

    python collect_data.py --env halfcheetahvel

1. Behaviour policy: loaded from behaviour/<env>.pt (kept in git); trained only when that file is
   missing or with --retrain (goal-relabelled SAC for locomotion, see behaviour_policy.py;
   metaworld's scripted policies need no training). The file also holds the per-task random and
   expert returns and the calibrated medium eps, so a fresh machine only does rollouts.
2. Rollouts: --num-trajs trajectories per task and quality, one file per (task, quality), written
   atomically; files already complete are skipped, so an interrupted run resumes where it stopped.
3. Summary: per quality, mean return (and success), random return, normalised score, and TQ/SACo on
   the test tasks' first 50 trajectories (the paper's Table 2), printed and saved to
   <data-dir>/<env>/summary.json (benchmark/scale.sh reads it as "this env's data are made"). It describes
   the test tasks, so a call that collects none of them (validation tasks only) writes none, and a call
   with fewer test tasks than the saved summary keeps it rather than shrinking it.
"""
from __future__ import annotations

import dataclasses
import json
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from behaviour_policy import (MEDIUM_BAND, SACActor, BehaviourPolicy, calibrate_medium, calibration_seeds, policy_input_dim, behaviour_rollout,
                              train_sac)
from common.data import (QUALITIES, dataset_path, load_behaviour, load_trajectories, save_behaviour, save_trajectories,
                         tq_saco)
from common.files import atomic_write_json, check_folder
from common.cli import run as cli
from common.envs import spec

DEFAULT_STEPS = {"halfcheetahvel": 1_200_000, "halfcheetahdir": 1_600_000, "antdir": 2_500_000, "metaworld": 0}
CALIB_EPISODES = {"metaworld": 5}  # metaworld episodes are 2.5x longer and the scripted policy is slow
TEST_CALIB_EPISODES = 20  # at least this many for the test tasks (5 gave 3 of 5 metaworld test classes off band)
SEED_BASE = {"expert": 0, "medium": 5_000_000}  # reset seeds of (quality, task, i): base + 10_000 task + i


@dataclass
class Args:
    env: Literal["halfcheetahvel", "halfcheetahdir", "antdir", "metaworld"] = "halfcheetahvel"
    """env family to collect"""
    data_dir: str = "data"
    """where the datasets go: <data-dir>/<env>/<quality>/task_NN.npz"""
    num_trajs: int = 100
    """trajectories per task and quality"""
    total_timesteps: int = -1
    """behaviour-policy training budget in env steps (-1: the env's default; only used when training)"""
    retrain: bool = False
    """train (and calibrate) the behaviour policy again even if behaviour/<env>.pt exists"""
    behaviour_dir: str = "behaviour"
    """where behaviour policies are read from and saved to"""
    tasks: tuple[int, ...] = ()
    """task indices to collect (default: all: pretraining, validation and test tasks; e.g. --tasks 45 46 for
    two metaworld test classes)"""
    qualities: tuple[Literal["medium", "expert"], ...] = ("medium", "expert")
    """dataset qualities to collect (pretraining reads only expert data: --qualities expert)"""
    calib_episodes: int = -1
    """episodes per task for the random/expert returns and each medium bisection step (-1: 10, metaworld 5;
    test tasks always get at least 20)"""
    calib_iters: int = 7
    """bisection steps of the medium eps calibration"""
    recalibrate: bool = False
    """calibrate the selected tasks again (e.g. with more --calib-episodes); their medium files are remade"""
    num_envs: int = -1
    """envs stepped together in rollouts (-1: 100 for locomotion; 10 for metaworld, whose envs each load
    a MuJoCo model per class and whose scripted policies gain nothing from batching)"""
    seed: int = 0
    """seed of the behaviour-policy training"""
    threads: int = 0
    """torch threads (0: torch's default)"""
    workers: int = 1
    """processes to split the tasks over (2 on a 2-core machine: rollouts are single-threaded)"""
    summary: bool = True
    """print and save the summary at the end"""


def fingerprint(beh: dict) -> str:
    """Identifies the behaviour policy a dataset file was made with (a retrained policy remakes all)."""
    h = hashlib.sha1(beh["env"].encode())
    if beh["actor"] is None:
        h.update(importlib.metadata.version("metaworld").encode())  # scripted policies ship with metaworld
    else:
        for k, v in sorted(beh["actor"].items()):
            h.update(v.numpy().tobytes())
    return h.hexdigest()[:12]


def load_or_train_behaviour(args: Args) -> tuple[BehaviourPolicy, dict]:
    """Load (or train) the family's behaviour policy and make sure the tasks of this run are
    calibrated: per-task random and expert returns (the normaliser) and medium eps. Calibration is
    stored per task (NaN = not yet), so a subset run calibrates only what it needs."""
    s = spec(args.env)
    path = os.path.join(args.behaviour_dir, f"{args.env}.pt")
    if os.path.exists(path) and not args.retrain:
        beh = load_behaviour(path)
        print(f"behaviour policy: {path} ({beh['train_config']['algo']}, {beh['train_config']['total_steps']} env steps)")
    else:
        steps = DEFAULT_STEPS[args.env] if args.total_timesteps < 0 else args.total_timesteps
        t0, actor, history = time.time(), None, []
        if args.env != "metaworld":
            print(f"training the behaviour policy: goal-relabelled SAC, {steps} env steps")
            ckpt = path.replace(".pt", ".train.pt")  # resumable: a rerun continues an interrupted training
            if args.retrain and os.path.exists(ckpt):
                os.remove(ckpt)  # --retrain means from scratch
            actor, history = train_sac(args.env, steps, seed=args.seed, eval_every=max(steps // 12, 10_000), ckpt_path=ckpt)
        nan = np.full(s.num_tasks, np.nan)
        beh = {"env": args.env, "actor": None if actor is None else actor.state_dict(), "history": history,
               "train_config": {"total_steps": steps, "seed": args.seed,
                                "algo": "metaworld scripted" if actor is None else "goal-relabelled SAC"},
               "random_return": nan.copy(), "expert_return": nan.copy(), "medium_eps": nan.copy(),
               "train_time_s": time.time() - t0, "calib_time_s": 0.0}
        save_behaviour(beh, path)
        if actor is not None:
            os.remove(ckpt)
    actor = None
    if beh["actor"] is not None:
        actor = SACActor(policy_input_dim(args.env), s.act_dim)
        actor.load_state_dict(beh["actor"])
    policy = BehaviourPolicy(args.env, actor)
    need = np.array([t for t in args.tasks if args.recalibrate or np.isnan(beh["medium_eps"][t])], dtype=int)
    if len(need):
        t0 = time.time()
        n = args.calib_episodes if args.calib_episodes > 0 else CALIB_EPISODES.get(args.env, 10)
        # the validation and test tasks' medium data are the ones finetuning uses: calibrate them with more episodes
        groups = [(np.array([t for t in need if t not in s.finetune_tasks], dtype=int), n),
                  (np.array([t for t in need if t in s.finetune_tasks], dtype=int), max(n, TEST_CALIB_EPISODES))]
        for group, k in groups:
            if not len(group):
                continue
            print(f"calibrating {len(group)} tasks x {k} episodes: random and expert returns, then medium eps")
            tasks, seeds = np.repeat(group, k), calibration_seeds(group, k)
            beh["random_return"][group] = behaviour_rollout(policy, tasks, seeds, 1.0, args.num_envs)[0].reshape(-1, k).mean(1)
            beh["expert_return"][group] = behaviour_rollout(policy, tasks, seeds, 0.0, args.num_envs)[0].reshape(-1, k).mean(1)
            beh["medium_eps"][group] = calibrate_medium(policy, group, beh["random_return"][group],
                                                        beh["expert_return"][group], episodes=k, iters=args.calib_iters)
        # merge into the file as it is now: parallel workers calibrate disjoint tasks of the same policy
        disk = load_behaviour(path)
        for k in ("random_return", "expert_return", "medium_eps"):
            disk[k][need] = beh[k][need]
        disk["calib_time_s"] += time.time() - t0
        save_behaviour(disk, path)
        beh = disk
        print(f"saved {path} (calibration {(time.time() - t0) / 60:.1f} min)")
    return policy, beh


def run_workers(args: Args) -> None:
    """Split the tasks over args.workers copies of this script (one torch thread each) and wait."""
    procs = []
    for w in range(args.workers):
        sub = dataclasses.replace(args, tasks=args.tasks[w::args.workers], workers=1, threads=1, summary=False)
        argv = []
        for f in dataclasses.fields(sub):
            v, flag = getattr(sub, f.name), "--" + f.name.replace("_", "-")
            argv += ([flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else
                     [flag, *map(str, v)] if isinstance(v, tuple) else [flag, str(v)])
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv]))
    failed = [w for w, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise RuntimeError(f"worker(s) {failed} failed; rerun the same command to resume")


def collect(args: Args, policy: BehaviourPolicy, beh: dict) -> None:
    s = spec(args.env)
    todo, bid = [], fingerprint(beh)
    for q in args.qualities:
        for task in args.tasks:
            eps = 0.0 if q == "expert" else float(beh["medium_eps"][task])
            try:  # complete = readable, the right size, made by this behaviour policy with this eps
                with np.load(dataset_path(args.data_dir, args.env, q, task)) as z:  # reads metadata only
                    if (len(z["episode_returns"]) == args.num_trajs and str(z["behaviour_id"]) == bid
                            and float(z["eps"]) == eps):
                        continue
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                pass  # missing, truncated or from an older layout: remake it
            todo.append((q, task))
    n_files = len(args.qualities) * len(args.tasks)
    print(f"{n_files - len(todo)} of {n_files} dataset files complete; collecting {len(todo)}")
    t0, steps = time.time(), 0
    for k, (q, task) in enumerate(todo):
        eps = 0.0 if q == "expert" else float(beh["medium_eps"][task])
        seeds = SEED_BASE[q] + 10_000 * task + np.arange(args.num_trajs)
        rets, succ, trajs = behaviour_rollout(policy, np.full(args.num_trajs, task), seeds, eps, args.num_envs, record=True,
                                    rng_seed=SEED_BASE[q] + task)
        save_trajectories(dataset_path(args.data_dir, args.env, q, task), trajs, env=args.env, task=task,
                          param=str(s.params[task]), quality=q, eps=eps, seeds=seeds, behaviour_id=bid,
                          episode_returns=rets, episode_success=succ)
        steps += sum(len(t["rewards"]) for t in trajs)
        el = time.time() - t0
        print(f"[{k + 1}/{len(todo)}] {q} task {task:2d}: return {rets.mean():9.1f}" +
              (f", success {succ.mean():.2f}" if args.env == "metaworld" else "") +
              f" | {steps / el:.0f} env steps/s, ETA {(len(todo) - k - 1) * el / (k + 1) / 60:.1f} min", flush=True)


def summarise(args: Args, beh: dict) -> dict:
    s = spec(args.env)
    n_ft = min(50, args.num_trajs)  # the paper's finetuning set: first 50 trajectories of a test task
    tasks = list(args.tasks)
    test = [t for t in s.test_tasks if t in tasks]  # the test tasks collected (main() checks there is one)
    data = {q: {t: load_trajectories(args.env, t, q, args.data_dir) for t in tasks} for q in QUALITIES}
    summary = {"env": args.env, "num_trajs": args.num_trajs, "medium_band": MEDIUM_BAND, "qualities": {}}
    # expert return per task = mean over its full expert dataset; random = behaviour calibration
    exp = {t: np.mean([tr["rewards"].sum() for tr in data["expert"][t]]) for t in tasks}
    for q in QUALITIES:
        rets = {t: np.mean([tr["rewards"].sum() for tr in data[q][t]]) for t in tasks}
        norm = {t: (rets[t] - beh["random_return"][t]) / (exp[t] - beh["random_return"][t]) for t in tasks}
        tqs = [tq_saco(data[q][t][:n_ft], data["expert"][t] + data["medium"][t], beh["random_return"][t], exp[t])
               for t in test]
        row = {"test_tasks": test, "test_return": float(np.mean([rets[t] for t in test])),
               "test_return_per_task": [round(float(rets[t]), 2) for t in test],
               "all_tasks_return": float(np.mean(list(rets.values()))),
               "random_test_return": float(np.mean(beh["random_return"][test])),
               "normalised_score_test": float(np.mean([norm[t] for t in test])),
               "normalised_score_min": float(min(norm.values())), "normalised_score_max": float(max(norm.values())),
               "TQ": float(np.mean([x[0] for x in tqs])),
               "SACo": float(np.mean([x[1] for x in tqs]))}
        if args.env == "metaworld":
            succ = {t: float(np.load(dataset_path(args.data_dir, args.env, q, t))["episode_success"].mean())
                    for t in tasks}
            row["test_success"] = float(np.mean([succ[t] for t in test]))
            row["test_success_per_task"] = [succ[t] for t in test]
            row["all_tasks_success"] = float(np.mean(list(succ.values())))
        summary["qualities"][q] = row
    print(f"\nsummary for {args.env} ({len(tasks)} tasks; test tasks {test}; TQ/SACo on their first {n_ft} trajectories)")
    print("| quality | test return | random | normalised (test mean / min..max all tasks) | TQ | SACo |"
          + (" success |" if args.env == "metaworld" else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.env == "metaworld" else ""))
    for q, r in summary["qualities"].items():
        print(f"| {q} | {r['test_return']:.1f} | {r['random_test_return']:.1f} | {r['normalised_score_test']:.2f} / "
              f"{r['normalised_score_min']:.2f}..{r['normalised_score_max']:.2f} | {r['TQ']:.2f} | {r['SACo']:.2f} |"
              + (f" {r['test_success']:.2f} |" if args.env == "metaworld" else ""))
    path = os.path.join(args.data_dir, args.env, "summary.json")
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    # the test tasks a saved summary covers (one made of other tasks, by an older version, covers none)
    kept = set(old.get("qualities", {}).get("expert", {}).get("test_tasks", [])) if isinstance(old, dict) else set()
    kept &= set(s.test_tasks)
    if old == json.loads(json.dumps(summary)):  # a complete dataset in a read-only folder needs no write
        print(f"{path} is up to date")
    elif not kept <= set(test):
        print(f"kept {path}: it covers test tasks {sorted(kept)}, this call only {test}; collect them all to remake it")
    else:
        atomic_write_json(path, summary)
        print(f"saved {path}")
    return summary


def check_args(args: Args) -> None:
    """One-line errors for flags out of range, before anything is loaded or written."""
    n_tasks = spec(args.env).num_tasks
    if any(not 0 <= t < n_tasks for t in args.tasks):
        raise ValueError(f"--tasks must be in 0..{n_tasks - 1} for {args.env}")
    if len(set(args.qualities)) != len(args.qualities):
        raise ValueError("--qualities lists a quality more than once; name each once")
    dup = sorted({t for t in args.tasks if args.tasks.count(t) > 1})
    if dup:
        raise ValueError(f"--tasks lists {dup} more than once; name each task once")
    for k in ("num_trajs", "calib_iters", "workers"):
        if getattr(args, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(args, k)}")
    for k in ("total_timesteps", "calib_episodes", "num_envs"):
        if getattr(args, k) == 0 or getattr(args, k) < -1:
            raise ValueError(f"--{k.replace('_', '-')} must be -1 (the default) or at least 1, got {getattr(args, k)}")
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (torch's default) or more, got {args.threads}")


def main(args: Args) -> None:
    check_args(args)
    args.tasks = args.tasks or tuple(range(spec(args.env).num_tasks))
    if args.num_envs < 1:
        args.num_envs = 10 if args.env == "metaworld" else 100
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not all(os.path.exists(dataset_path(args.data_dir, args.env, q, t)) for q in args.qualities for t in args.tasks):
        check_folder(os.path.join(args.data_dir, args.env), "--data-dir")  # before any rollout, not after
    start = time.time()
    if args.workers > 1:
        load_or_train_behaviour(dataclasses.replace(args, tasks=(), recalibrate=False))  # train once, before splitting
        run_workers(args)
        policy, beh = load_or_train_behaviour(dataclasses.replace(args, recalibrate=False))  # calibrated by now: loads
    else:
        policy, beh = load_or_train_behaviour(args)
        collect(args, policy, beh)
    if args.summary and set(args.qualities) != set(QUALITIES):
        print("no summary: it compares both qualities (collect both to get it)")
    elif args.summary and not set(args.tasks) & set(spec(args.env).test_tasks):
        print(f"no summary: it describes the test tasks {list(spec(args.env).test_tasks)}, none of which was collected")
    elif args.summary:
        summarise(args, beh)
    print(f"total wall time {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    cli(main, Args)
